"""GRPO on trajectory turns: advantages, rows, and the loss of one micro-batch.

Every turn of an episode gets the episode's group advantage (the episode reward is
rollout.agent.episode_reward, minus the mean of the G episodes of its query; divided by their
std only with learner.std_normalize_advantages). Log-probs are
recomputed by the learner; the ratio's denominator is the learner's own log-prob from before the
update (so numerics differences to the sampler do not leak into the clip), and the learner-vs-
sampler gap is reported as a health metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from config.schema import LearnerConfig, LossAggregation
from learner.batch import Batch, Row, VideoInputs
from learner.losses import group_advantages, logprob_mismatch, policy_loss, token_logprobs
from learner.shared_prefix import suffix_logits
from learner.stats import Stats
from rollout.agent import episode_reward
from rollout.trajectory import Turn

log = logging.getLogger(__name__)


def turn_advantages(turns: list[Turn], std_normalize: bool) -> list[float]:
    episodes: dict[str, list[Turn]] = {}
    for t in turns:
        episodes.setdefault(t.episode_id, []).append(t)
    names = list(episodes)
    rewards = torch.tensor([episode_reward(episodes[e]) for e in names], dtype=torch.float64)
    queries = {q: i for i, q in enumerate(dict.fromkeys(episodes[e][0].query_id for e in names))}
    groups = torch.tensor([queries[episodes[e][0].query_id] for e in names])
    adv = dict(zip(names, group_advantages(rewards, groups, std_normalize).tolist(), strict=True))
    return [adv[t.episode_id] for t in turns]


def grpo_rows(turns: list[Turn], videos: VideoInputs, std_normalize: bool) -> list[Row]:
    """One row per turn, each with its episode's advantage: an episode's log-prob is the sum
    over its turns, so every turn counts in full (weighting turns 1 / turns-in-episode biased
    the gradient and did not stop the collapse it was meant to)."""
    rows = []
    for t, adv in zip(turns, turn_advantages(turns, std_normalize), strict=True):
        if len(t.sampling_logprobs) != len(t.response_ids):
            raise ValueError(f"turn {t.episode_id}/{t.turn}: {len(t.sampling_logprobs)} log-probs "
                             f"for {len(t.response_ids)} response tokens")
        video = videos.for_turn(t.video_path, t.frame_times) if t.video_path else None
        rows.append(Row(ids=list(t.prompt_ids) + list(t.response_ids), mask=t.loss_mask,
                        video=video, sampled=list(t.sampling_logprobs), advantage=adv))
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
    cut to the `top_p` nucleus, as vLLM reports them (processed logprobs)."""

    def __init__(self, lcfg: LearnerConfig, ref: torch.nn.Module | None, temperature: float = 1.0,
                 top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"GRPO needs a sampling temperature > 0, got {temperature}")
        self.lcfg, self.ref, self.temperature, self.top_p = lcfg, ref, temperature, top_p
        self.old: dict[tuple[int, int], torch.Tensor] = {}

    def logprobs(self, model: Callable, batch: Batch) -> torch.Tensor:
        return self._sampled_logprobs(model(**batch.inputs)[0], batch)

    def _sampled_logprobs(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return token_logprobs(logits[:, :-1] / self.temperature, batch.labels, self.top_p)

    def __call__(self, model: Callable, batch: Batch, key: tuple[int, int], norm: float,
                 stats: Stats) -> torch.Tensor:
        c = self.lcfg
        lp = self.logprobs(model, batch)
        old = self.old.pop(key, None)
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
        return loss * (count / max(norm, 1.0))


def warn_mismatch(metrics: dict[str, float], threshold: float) -> None:
    if metrics["logprob_mismatch"] > threshold:
        log.warning("learner vs sampler log-prob mismatch %.4f > %.4f: stale weights or a "
                    "numerics gap make this update off-policy",
                    metrics["logprob_mismatch"], threshold)
