"""Confidence intervals over queries: a percentile bootstrap of a mean, and the paired
bootstrap of the difference between two policies evaluated on the same queries. With a few
dozen test queries one query moves a percentage by several points; these say how far apart
two numbers must be to mean anything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def mean_ci(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
            seed: int = 0) -> tuple[float, float]:
    """(low, high) of the mean of `values` by resampling them with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a: Mapping[object, float], b: Mapping[object, float], **kw
                      ) -> tuple[float, float, float]:
    """(mean of a − b, low, high) over the queries both hold, resampled as pairs."""
    common = [q for q in a if q in b]
    if not common:
        raise ValueError("the two evaluations share no query")
    diff = [float(a[q]) - float(b[q]) for q in common]
    low, high = mean_ci(diff, **kw)
    return float(np.mean(diff)), low, high


def heldout_change(before: list[dict], after: list[dict]) -> dict:
    """Mean InfoNCE and CE of the held-out turns before and after SFT, and the paired change
    of InfoNCE with its 95 % interval."""
    def mean(rows: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    change = paired_difference({i: r["infonce"] for i, r in enumerate(after)},
                               {i: r["infonce"] for i, r in enumerate(before)})
    return {"heldout_infonce": [mean(before, "infonce"), mean(after, "infonce")],
            "heldout_ce": [mean(before, "ce"), mean(after, "ce")],
            "heldout_infonce_change": [round(v, 4) for v in change], "heldout_turns": len(before)}


def heldout_report(before: list[dict], after: list[dict], stepped: list[dict] | None) -> dict:
    """`heldout_change` over the whole SFT stage, and with `stepped` (the turns measured after
    SFT's steps, before the heads fit) the fit's own share under "heads_fit": the two move the
    refinement by different objectives, so the stage's change alone hides which one moved it."""
    out = heldout_change(before, after)
    if stepped is not None:
        fit = heldout_change(stepped, after)
        out["heads_fit"] = {k: fit[k] for k in ("heldout_infonce", "heldout_infonce_change")}
    return out
