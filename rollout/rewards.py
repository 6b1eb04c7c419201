"""Per-turn rewards, as pure functions of a parsed response and what the search returned.

Five parts, weighted by ``config.schema.RewardConfig``: format (the output can be acted on),
verification (the matched/not_matched judgement is right), grounding (temporal IoU of the
predicted span, only when the judgement is a correct "matched"), found (the turn accepted the
ground-truth video), and retrieval (how well the refined query ranks the ground-truth video,
from InfoNCE; only on turns that refined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from models.parsing import ParsedResponse


class RewardWeights(Protocol):
    format: float
    verification: float
    retrieval: float
    grounding: float
    found: float


def temporal_iou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """IoU of two [start, end] spans as written; 0 rather than an error for anything that is no
    moment: a non-number, a non-finite time, or a span whose start is after its end (a policy
    that writes start 9, end 2 has not named the moment 2-9)."""
    try:
        ps, pe, gs, ge = (float(x) for x in (*pred, *gt))
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not all(math.isfinite(x) for x in (ps, pe, gs, ge)) or ps > pe or gs > ge:
        return 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = (ge - gs) + (pe - ps) - inter
    return inter / union if union > 0 else 0.0


def format_reward(parsed: ParsedResponse) -> float:
    """Partial credit per flag, so a model that gets some of the format right still learns."""
    return (parsed.think_ok + parsed.times_ok + parsed.refine_ok) / 3.0


def verification_reward(parsed: ParsedResponse, retrieved_is_gt: bool) -> float:
    if parsed.answer is None:
        return -1.0
    return 1.0 if parsed.matched == bool(retrieved_is_gt) else -1.0


def grounding_reward(
    parsed: ParsedResponse, retrieved_is_gt: bool, gt_span: Sequence[float]
) -> float:
    if not (retrieved_is_gt and parsed.matched and parsed.times_ok):
        return 0.0
    return temporal_iou((parsed.start, parsed.end), gt_span)


def infonce_loss(pos_score: float, neg_scores: Sequence[float], tau: float) -> float:
    """-log softmax of the positive among [positive, negatives] at temperature tau.

    Computed with log-sum-exp so cosine scores at small tau do not overflow.
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    logits = np.concatenate([[pos_score], np.asarray(neg_scores, dtype=np.float64).ravel()])
    logits = logits / tau
    peak = logits.max()
    return float(peak + np.log(np.exp(logits - peak).sum()) - logits[0])


def retrieval_reward(
    pos_score: float,
    neg_scores: Sequence[float],
    tau: float,
    baseline_pos: float | None = None,
    baseline_negs: Sequence[float] | None = None,
    improvement: bool = False,
) -> float:
    """exp(-L) in (0, 1]; with ``improvement``, the gain over the unrefined query's exp(-L).

    The improvement form rewards what the refinement added rather than how easy the
    query already was.
    """
    reward = math.exp(-infonce_loss(pos_score, neg_scores, tau))
    if not improvement:
        return reward
    if baseline_pos is None or baseline_negs is None:
        raise ValueError("improvement needs baseline_pos and baseline_negs")
    return reward - math.exp(-infonce_loss(baseline_pos, baseline_negs, tau))


@dataclass(frozen=True)
class RewardParts:
    format: float
    verification: float
    retrieval: float | None  # None: the turn did not refine, so there is nothing to score
    grounding: float
    found: bool = False  # accepted the ground-truth video

    def weighted(self, weights: RewardWeights) -> dict[str, float]:
        """Each part times its weight, keyed by part name (for logging as well as summing)."""
        return {name: getattr(weights, name) * float(getattr(self, name) or 0.0)
                for name in REWARD_PARTS}


REWARD_PARTS = tuple(f.name for f in fields(RewardParts))


def total_reward(parts: RewardParts, weights: RewardWeights) -> float:
    return sum(parts.weighted(weights).values())


def episode_total(turns: Sequence[RewardParts], weights: RewardWeights) -> float:
    """The one number per episode that GRPO compares within its group. Format and retrieval
    are averaged over the turns; verification is the episode's worst judgement, grounding and
    found the final turn's.

    A plain mean of turn rewards can be diluted: rejecting the ground truth at turn 1 and then
    rightly rejecting two wrong videos scores (-1 + 1 + 1) / 3 on verification, which GRPO
    learns to exploit. Under the worst judgement one wrong verdict costs the whole
    verification reward, whatever follows.
    """
    if not turns:
        return 0.0
    n = len(turns)
    return (weights.format * sum(p.format for p in turns) / n
            + weights.verification * min(p.verification for p in turns)
            + weights.retrieval * sum(p.retrieval or 0.0 for p in turns) / n
            + weights.grounding * turns[-1].grounding + weights.found * turns[-1].found)
