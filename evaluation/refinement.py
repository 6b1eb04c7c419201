"""The paper's refinement figure: where the ground truth stands in the whole corpus before
and after each refined search (its rank among all indexed videos, and its cosine with the
query vector), per refinement turn. A refinement that helps lowers the rank and raises the
cosine; VR@SQR alone only sees the top-1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class GroundTruthPlace:
    """The ground truth in one full ranking: 1-based rank and cosine with the query vector."""
    rank: int
    cosine: float


def place(ranked_ids: Sequence[str], scores: Sequence[float], gt: str) -> GroundTruthPlace | None:
    """From a ranking of every indexed video (best first) and its scores; None when the
    ground truth is not indexed (its video failed to decode at indexing)."""
    ids = list(ranked_ids)
    if gt not in ids:
        return None
    i = ids.index(gt)
    return GroundTruthPlace(i + 1, float(scores[i]))


def refinement_figure(turns: Sequence[tuple[int, GroundTruthPlace, GroundTruthPlace]]) -> dict:
    """`turns`: (turn number, place under the text query, place under that turn's refined
    query) for every refined search. Means over all of them and per turn number."""
    def summary(rows) -> dict:
        before = np.array([(b.rank, b.cosine) for _, b, _ in rows], np.float64)
        after = np.array([(a.rank, a.cosine) for _, _, a in rows], np.float64)
        return {"turns": len(rows),
                "gt_rank_before": float(before[:, 0].mean()), "gt_rank_after": float(after[:, 0].mean()),
                "gt_cos_before": float(before[:, 1].mean()), "gt_cos_after": float(after[:, 1].mean()),
                "gt_rank_improved": float(100.0 * (after[:, 0] < before[:, 0]).mean())}
    if not turns:
        return {"turns": 0, "per_turn": {}}
    per_turn = {str(t): summary([r for r in turns if r[0] == t]) for t in sorted({r[0] for r in turns})}
    return summary(turns) | {"per_turn": per_turn}


def soft_spread(soft_tokens: Sequence[np.ndarray]) -> float | None:
    """The share of the soft tokens' energy that differs between the turns that emitted them:
    sum ||s_i - mean||^2 / sum ||s_i||^2 over those turns' [N, D] soft tokens. Near 0 the heads
    emit one query-independent refinement (a learned prompt, not a refinement of this query);
    None with fewer than two turns."""
    if len(soft_tokens) < 2:
        return None
    s = np.stack([np.asarray(t, np.float64) for t in soft_tokens])
    energy = float((s**2).sum())
    return float(((s - s.mean(0)) ** 2).sum() / energy) if energy > 0 else 0.0
