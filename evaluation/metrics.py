"""Retrieval, verification and moment metrics from a predictions table.

One row per (query, turn): ``query_id, turn, gt_video_id, gt_start, gt_end, video_id,
answer, pred_start, pred_end, is_final``. Per query, on a given row:

* VR: the top-1 retrieved video is the ground-truth video.
* VER: the judgement is right, i.e. answered "matched" iff VR; no answer counts as wrong.
* R1@θ (VCMR): VR, answered "matched", and IoU(predicted span, gt span) >= θ as computed;
  a span with start > end, a missing or non-finite time is no moment (IoU 0).

"final" scores each query on its final row; "per_turn" scores the rows of each turn, which
shows what later turns of refinement add. final["VR@any"] counts the queries whose
ground-truth video was the top-1 of any of their turns: what the search put in front of the
verifier, whether or not the verifier then took it. Values are percentages, except "reward":
where the rows carry ``episode_reward``, final also holds its mean over queries (the number GRPO
normalises, rollout.rewards.episode_total), which compares models on the training objective.

"refinement" asks whether Soft Query Refinement searches better than not refining: on every
turn reached by a refined search (turn >= 2), VR of its top-1 against VR of the video the
first search ranked next among those not shown yet (what rejecting and taking the next result
would have shown). It needs the rows' ``retrieved_ids``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from evaluation.bootstrap import mean_ci, paired_difference
from rollout.rewards import temporal_iou

Row = Mapping[str, Any]


def as_rows(preds: pa.Table | Iterable[Row]) -> list[Row]:
    return preds.to_pylist() if isinstance(preds, pa.Table) else list(preds)


def final_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per query, in first-seen order: its is_final row, else its last turn."""

    def rank(row: Row) -> tuple[bool, int]:
        return bool(row["is_final"]), int(row["turn"])

    best: dict[Any, Row] = {}
    for row in rows:
        cur = best.get(row["query_id"])
        if cur is None or rank(row) >= rank(cur):
            best[row["query_id"]] = row
    return list(best.values())


def _row_hits(row: Row, thresholds: Sequence[float]) -> dict[str, float]:
    """One row's metrics as percentages (100 or 0)."""
    vr = row.get("video_id") is not None and row["video_id"] == row["gt_video_id"]
    answer = row.get("answer")
    hits = {"VER": answer is not None and (answer == "matched") == vr, "VR": vr}
    iou = temporal_iou((row.get("pred_start"), row.get("pred_end")),
                       (row.get("gt_start"), row.get("gt_end"))) if vr and answer == "matched" else 0.0
    for t in thresholds:  # as computed: a tolerance would count 0.2999... at 0.3
        hits[f"R1@{t}"] = iou >= t
    return {k: 100.0 * v for k, v in hits.items()}


def _score(rows: Sequence[Row], thresholds: Sequence[float]) -> dict[str, float]:
    n = len(rows)
    keys = [f"R1@{t}" for t in thresholds] + ["VER", "VR"]
    per_row = [_row_hits(r, thresholds) for r in rows]
    out = {k: sum(h[k] for h in per_row) / n if n else 0.0 for k in keys}
    return out | {"num_queries": n}


def compute_metrics(
    preds: pa.Table | Iterable[Row], iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7)
) -> dict[str, Any]:
    rows = as_rows(preds)
    by_turn: dict[int, dict[Any, Row]] = {}
    for row in rows:
        by_turn.setdefault(int(row["turn"]), {})[row["query_id"]] = row
    per_turn = {t: _score(list(q.values()), iou_thresholds) for t, q in sorted(by_turn.items())}
    last = final_rows(rows)
    final = _score(last, iou_thresholds)
    shown = {r["query_id"] for r in rows
             if r.get("video_id") is not None and r["video_id"] == r["gt_video_id"]}
    final["VR@any"] = 100.0 * len(shown) / len(last) if last else 0.0
    per_query = {}
    for r in last:
        values = _row_hits(r, iou_thresholds)
        values["VR@any"] = 100.0 * (r["query_id"] in shown)
        if r.get("episode_reward") is not None:  # a null is a query without a reward
            values["reward"] = float(r["episode_reward"])
        per_query[r["query_id"]] = values
    rewards = [v["reward"] for v in per_query.values() if "reward" in v]
    if rewards:
        final["reward"] = sum(rewards) / len(rewards)
    ci_keys = [k for k in final if k != "num_queries"]
    final_ci = {k: list(mean_ci(vals)) for k in ci_keys
                if (vals := [v[k] for v in per_query.values() if k in v])}
    out = {"final": final, "final_ci": final_ci, "per_turn": per_turn, "per_query": per_query}
    if rows and all(row.get("retrieved_ids") is not None for row in rows):
        out["refinement"] = refinement_metrics(rows)
    return out


def refinement_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """Refined top-1 vs the first search's next unseen result, on the turns refinement reached."""
    episodes: dict[Any, dict[int, Row]] = {}
    for row in rows:
        episodes.setdefault(row["query_id"], {})[int(row["turn"])] = row
    hits = []  # (refined search found it, next result would have), per refined turn
    for turns in episodes.values():
        if 1 not in turns:
            continue
        first = turns[1]
        shown = [first["video_id"]]
        for t in sorted(k for k in turns if k >= 2):
            row = turns[t]
            candidate = next((v for v in first["retrieved_ids"] if v not in shown), None)
            # a None candidate (ranking used up) never is the ground truth
            hits.append((row["video_id"] == row["gt_video_id"], candidate == row["gt_video_id"]))
            shown.append(row["video_id"])
    n = len(hits)
    out = {"refined_turns": n, "VR_refined": 100.0 * sum(r for r, _ in hits) / n if n else 0.0,
           "VR_next_in_ranking": 100.0 * sum(x for _, x in hits) / n if n else 0.0}
    if hits:  # paired per turn: both searches answer the same refined turn
        diffs = [100.0 * (r - x) for r, x in hits]
        out["VR_refined_minus_next"] = [sum(diffs) / n, *mean_ci(diffs)]
    return out


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[float]]:
    """{metric: [mean of a − b, low, high]} over the queries both evaluations hold (the paired
    bootstrap: each resample draws the same queries for both policies)."""
    qa, qb = a["per_query"], b["per_query"]
    metrics = [k for k in a["final_ci"] if k in b["final_ci"]]
    out = {}
    for k in metrics:
        va = {q: v[k] for q, v in qa.items() if k in v}
        vb = {q: v[k] for q, v in qb.items() if k in v}
        out[k] = list(paired_difference(va, vb))
    return out
