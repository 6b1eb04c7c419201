"""Retrieval, verification and moment metrics from a predictions table.

One row per (query, turn): ``query_id, turn, gt_video_id, gt_start, gt_end, video_id,
answer, pred_start, pred_end, is_final``. Per query, on a given row:

* VR: the top-1 retrieved video is the ground-truth video.
* VER: the judgement is right, i.e. answered "matched" iff VR; no answer counts as wrong.
* R1@θ (VCMR): VR, answered "matched", and IoU(predicted span, gt span) >= θ.

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

from rollout.rewards import temporal_iou

Row = Mapping[str, Any]
# IoU is a ratio of float differences: a span that is exactly at θ on paper can come out
# a few ulps below it, and should still count.
_IOU_EPS = 1e-9


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


def _score(rows: Sequence[Row], thresholds: Sequence[float]) -> dict[str, float]:
    n = len(rows)
    hits = {f"R1@{t}": 0 for t in thresholds} | {"VER": 0, "VR": 0}
    for row in rows:
        vr = row["video_id"] is not None and row["video_id"] == row["gt_video_id"]
        answer = row.get("answer")
        hits["VR"] += vr
        hits["VER"] += answer is not None and (answer == "matched") == vr
        if not (vr and answer == "matched"):
            continue
        iou = temporal_iou(
            (row.get("pred_start"), row.get("pred_end")), (row["gt_start"], row["gt_end"])
        )
        for t in thresholds:
            hits[f"R1@{t}"] += iou >= t - _IOU_EPS
    out = {k: 100.0 * v / n if n else 0.0 for k, v in hits.items()}
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
             if r["video_id"] is not None and r["video_id"] == r["gt_video_id"]}
    final["VR@any"] = 100.0 * len(shown) / len(last) if last else 0.0
    if last and all("episode_reward" in row for row in last):
        final["reward"] = sum(float(row["episode_reward"]) for row in last) / len(last)
    out = {"final": final, "per_turn": per_turn}
    if rows and all(row.get("retrieved_ids") is not None for row in rows):
        out["refinement"] = refinement_metrics(rows)
    return out


def refinement_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """Refined top-1 vs the first search's next unseen result, on the turns refinement reached."""
    episodes: dict[Any, dict[int, Row]] = {}
    for row in rows:
        episodes.setdefault(row["query_id"], {})[int(row["turn"])] = row
    n = refined = nxt = 0
    for turns in episodes.values():
        if 1 not in turns:
            continue
        first = turns[1]
        shown = [first["video_id"]]
        for t in sorted(k for k in turns if k >= 2):
            row = turns[t]
            candidate = next((v for v in first["retrieved_ids"] if v not in shown), None)
            n += 1
            refined += row["video_id"] == row["gt_video_id"]
            nxt += candidate == row["gt_video_id"]  # None (ranking used up) never is
            shown.append(row["video_id"])
    return {"refined_turns": n, "VR_refined": 100.0 * refined / n if n else 0.0,
            "VR_next_in_ranking": 100.0 * nxt / n if n else 0.0}
