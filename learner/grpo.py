"""GRPO on rollout samples: rows, and the loss of one micro-batch.

Each sample arrives with its episode's group advantage (computed by the rollout while the group
was together: rollout.group.Group). Log-probs are
recomputed by the learner; the ratio's denominator is the learner's own log-prob from before the
update (so numerics differences to the sampler do not leak into the clip), and the learner-vs-
sampler gap is reported as a health metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from config.schema import LearnerConfig, LossAggregation, SQRConfig
from learner.batch import Batch, Row, VideoInputs
from learner.losses import (
    latent_policy_loss,
    logprob_mismatch,
    policy_loss,
    token_logprobs,
)
from learner.sample import Sample
from learner.shared_prefix import suffix_logits
from learner.stats import Stats
from models.sqr_heads import gaussian_logprob

log = logging.getLogger(__name__)


def grpo_rows(samples: list[Sample], videos: VideoInputs,
              latent_slots: tuple[int, int] | None = None) -> list[Row]:
    """One row per sample, with its episode's advantage: an episode's log-prob is the sum over
    its turns, so every turn counts in full (weighting turns 1 / turns-in-episode biased the
    gradient and did not stop the collapse it was meant to).

    `latent_slots` (slot token id, N) for the latent policy: every row ends in N slot tokens
    (after the response, so they change no token's logits), where the forward recomputes the
    soft tokens' mean; rows whose turn refined with a sampled action carry it."""
    rows = []
    for s in samples:
        video = videos.for_turn(s.video_path, s.frame_times) if s.video_path else None
        row = Row(ids=list(s.prompt_ids) + list(s.response_ids),
                  mask=[0] * len(s.prompt_ids) + [1] * len(s.response_ids),
                  video=video, sampled=list(s.sampled_logprobs), advantage=s.advantage)
        if latent_slots is not None:
            slot, n = latent_slots
            row.ids, row.mask, row.num_slots = row.ids + [slot] * n, row.mask + [0] * n, n
            if s.latent_action is not None:
                row.latent_action, row.latent_weight = np.asarray(s.latent_action, np.float32), 1.0
        rows.append(row)
    return rows


def normaliser(rows: list[Row], aggregation: LossAggregation) -> float:
    """The whole mini-batch's token count (token_mean) or non-empty sequence count (seq_mean)."""
    if LossAggregation(aggregation) is LossAggregation.token_mean:
        return float(sum(sum(r.mask[1:]) * r.weight for r in rows))
    return float(sum(r.weight for r in rows if any(r.mask[1:])))


def _local_count(batch: Batch, aggregation: LossAggregation) -> torch.Tensor:
    if LossAggregation(aggregation) is LossAggregation.token_mean:
        return batch.mask.sum()
    return (batch.mask.sum(-1) > 0).sum().to(batch.mask.dtype)


class GRPOLoss:
    """Callable per micro-batch: this micro-batch's share of the mini-batch's global token (or
    sequence) mean, so micro-batches and ranks may hold any number of tokens. `old` holds the
    pre-update log-probs of micro-batches after the first mini-batch, keyed (mini, micro).
    Log-probs are those of the distribution the rollout sampled from: logits / `temperature`,
    cut to the `top_p` nucleus, as vLLM reports them (processed logprobs).

    With the latent policy (`sqr.latent_sigma` > 0) the same forward also gives each row's
    soft-token mean at its slots; the refined rows add `latent_loss_weight` x PPO-clip on their
    action's Gaussian density ratio, a share of the mini-batch's mean over refined rows."""

    def __init__(self, lcfg: LearnerConfig, ref: torch.nn.Module | None, temperature: float = 1.0,
                 top_p: float = 1.0, sqr: SQRConfig | None = None):
        if temperature <= 0:
            raise ValueError(f"GRPO needs a sampling temperature > 0, got {temperature}")
        self.lcfg, self.ref, self.temperature, self.top_p = lcfg, ref, temperature, top_p
        self.sqr = sqr if sqr is not None and sqr.latent_sigma > 0 else None
        self.old: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def logprobs(self, model: Callable, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token log-probs [B, S-1], the actions' latent log-densities [B] or None)."""
        logits, _, mean = model(**batch.inputs)
        latent = None
        if self.sqr is not None:
            actions = batch.latent_actions(tuple(mean.shape[1:]), mean.device)
            latent = gaussian_logprob(actions, mean.float(), self.sqr.latent_sigma)
        return self._sampled_logprobs(logits, batch), latent

    def _sampled_logprobs(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return token_logprobs(logits[:, :-1] / self.temperature, batch.labels, self.top_p)

    def __call__(self, model: Callable, batch: Batch, key: tuple[int, int],
                 norm: tuple[float, float], stats: Stats) -> torch.Tensor:
        c = self.lcfg
        lp, latent = self.logprobs(model, batch)
        old, old_latent = self.old.pop(key, (None, None))
        old = lp.detach() if old is None else old
        ref_lp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_lp = self._sampled_logprobs(suffix_logits(self.ref, batch.inputs), batch)
        loss, parts = policy_loss(lp, old, batch.advantages, batch.mask, c.clip_eps,
                                  c.clip_eps_high, ref_lp, c.kl_beta, c.kl_estimator,
                                  c.loss_aggregation)
        count = _local_count(batch, c.loss_aggregation)
        tokens = float((batch.mask > 0).sum())  # the mask holds episode weights
        for name, value in parts.items():
            stats.add(name, value, tokens)
        stats.add("logprob_mismatch", logprob_mismatch(old, batch.sampled, batch.mask), tokens)
        stats.add("loss", loss.item(), float(count))
        stats.total("tokens", tokens)
        total = loss * (count / max(norm[0], 1.0))
        if latent is not None:
            total = total + self._latent(batch, latent, old_latent, norm[1], stats)
        return total

    def _latent(self, batch: Batch, latent: torch.Tensor, old: torch.Tensor | None,
                norm: float, stats: Stats) -> torch.Tensor:
        weights = batch.latent_weights(latent.device)
        old = latent.detach() if old is None else old
        # rows without an action hold zeros there: their log-density is meaningless, and its
        # ratio can overflow to inf, which times weight 0 is NaN
        acted = weights > 0
        per_row, ratio, clipped = latent_policy_loss(
            torch.where(acted, latent, old), old,
            batch.advantages.to(latent.dtype), self.sqr.latent_clip_eps)
        refined = float(weights.sum())

        def mean(x: torch.Tensor) -> float:
            return (x * weights).sum().item() / max(refined, 1.0)

        stats.add("latent_loss", mean(per_row.detach()), refined)
        stats.add("latent_ratio", mean(ratio), refined)
        stats.add("latent_clip_fraction", mean(clipped), refined)
        stats.total("latent_rows", refined)
        return self.sqr.latent_loss_weight * (per_row * weights).sum() / max(norm, 1.0)


def warn_mismatch(metrics: dict[str, float], threshold: float) -> None:
    if metrics["logprob_mismatch"] > threshold:
        log.warning("learner vs sampler log-prob mismatch %.4f > %.4f: stale weights or a "
                    "numerics gap make this update off-policy",
                    metrics["logprob_mismatch"], threshold)
