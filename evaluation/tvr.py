"""Predictions in the format of TVRetrieval's standalone evaluator (`standalone_eval/eval.py`),
so a run's results can be scored by the official code as well as by `evaluation.metrics`.

`tvr_submission.json` is one JSON object::

    {"video2idx": {"<video_id>": idx, ...},
     "VR":   [{"desc_id": int, "desc": str, "predictions": [[idx, 0, 0, score], ...]}, ...],
     "VCMR": [{"desc_id": int, "desc": str, "predictions": [[idx, start, end, score], ...]}, ...]}

For each query, from its final turn: VR ranks the videos of the final search, the video the
agent ended on first. VCMR holds at most 100 entries: the predicted moment first when the
answer is `matched` with a usable span, then the ranked videos with the empty span [0, 0]
(a video without a predicted moment, which overlaps no ground truth). So R@1 is the project's
own: the right video, accepted, with enough IoU. The evaluator asserts that its ground truth
and the submission hold the same integer `desc_id`s and crashes on an empty prediction list:
ids are integers (`desc_ids`), a query whose episode retrieved nothing gets the sentinel
video index -1 (matching no video), and no NaN or inf is written. SVMR is not written: the agent
predicts moments only in the videos it accepts, not in the ground-truth video of each query.

`tvr_ground_truth.jsonl` holds the matching ground truth (`desc_id`, `desc`, `vid_name`,
`ts`, and `type` "v": the evaluator reads TVR's description types, which other datasets lack),
and `tvr_desc_ids.json` maps the project's query ids to the integer ids.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from evaluation.metrics import Row, as_rows, final_rows

MAX_PREDICTIONS = 100  # the evaluator reads no more per query
NO_VIDEO = -1  # a ranking for a query whose episode retrieved nothing: matches no video
_SOURCE_ID = re.compile(r"^[a-z_]+:(\d+)$")  # e.g. "fig:1234", a source's own numeric id


def desc_ids(query_ids: Sequence[Any]) -> dict[Any, int]:
    """query id -> integer desc_id: the source's numeric id when every query has one (an int,
    or "<source>:<int>" as the FIG and DiDeMo readers write them), else the position in sorted
    order, which stays the same for the same set of queries."""
    numeric = {}
    for q in query_ids:
        m = _SOURCE_ID.match(q) if isinstance(q, str) else None
        if isinstance(q, int) and not isinstance(q, bool):
            numeric[q] = q
        elif m:
            numeric[q] = int(m.group(1))
    if len(numeric) == len(query_ids) and len(set(numeric.values())) == len(numeric):
        return numeric
    return {q: i for i, q in enumerate(sorted(query_ids, key=str))}


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _ranking(row: Row, video2idx: dict[str, int]) -> list[tuple[int, float]]:
    """(video idx, score) of the final search, the video the episode ended on first."""
    ids = list(row.get("retrieved_ids") or [])
    scores = list(row.get("retrieved_scores") or [])
    score_of = {v: _finite(s) for v, s in zip(ids, scores, strict=False)}
    ordered = ([row["video_id"]] if row.get("video_id") is not None else []) + ids
    out, seen = [], set()
    for v in ordered:
        if v in seen:
            continue
        if v not in video2idx:
            raise ValueError(f"query {row['query_id']!r}: video {v!r} is not in the corpus's video ids")
        seen.add(v)
        out.append((video2idx[v], score_of.get(v) or 0.0))
    return out[:MAX_PREDICTIONS] or [(NO_VIDEO, 0.0)]


def _moment(row: Row) -> tuple[float, float] | None:
    """The predicted span of an accepted video, if it is one (finite, start <= end)."""
    if row.get("answer") != "matched" or row.get("video_id") is None:
        return None
    start, end = _finite(row.get("pred_start")), _finite(row.get("pred_end"))
    return (start, end) if start is not None and end is not None and start <= end else None


def tvr_entries(row: Row, desc_id: int, video2idx: dict[str, int]) -> tuple[dict, dict]:
    """(VR entry, VCMR entry) of one query's final turn."""
    ranking = _ranking(row, video2idx)
    head = {"desc_id": desc_id, "desc": row.get("query_text") or ""}
    vr = head | {"predictions": [[idx, 0.0, 0.0, score] for idx, score in ranking]}
    moment = _moment(row)
    rest = ranking[1:] if moment else ranking
    vcmr = [[idx, 0.0, 0.0, score] for idx, score in rest]
    if moment:
        vcmr.insert(0, [ranking[0][0], moment[0], moment[1], ranking[0][1]])
    return vr, head | {"predictions": vcmr[:MAX_PREDICTIONS]}


def write_tvr_submission(preds: pa.Table | Iterable[Row], out_dir: str | Path,
                         video_ids: list[str]) -> Path:
    """Writes tvr_submission.json, tvr_ground_truth.jsonl and tvr_desc_ids.json into out_dir;
    returns the submission's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video2idx = {vid: i for i, vid in enumerate(video_ids)}
    final = final_rows(as_rows(preds))
    ids = desc_ids([r["query_id"] for r in final])
    vr, vcmr, truth = [], [], []
    for row in final:
        a, b = tvr_entries(row, ids[row["query_id"]], video2idx)
        vr.append(a)
        vcmr.append(b)
        truth.append({"desc_id": ids[row["query_id"]], "desc": row.get("query_text") or "",
                      "vid_name": row["gt_video_id"], "type": "v",
                      "ts": [_finite(row.get("gt_start")) or 0.0, _finite(row.get("gt_end")) or 0.0]})
    path = out_dir / "tvr_submission.json"
    path.write_text(json.dumps({"video2idx": video2idx, "VR": vr, "VCMR": vcmr}, allow_nan=False))
    (out_dir / "tvr_ground_truth.jsonl").write_text(
        "".join(json.dumps(t, allow_nan=False) + "\n" for t in truth))
    (out_dir / "tvr_desc_ids.json").write_text(json.dumps({str(q): i for q, i in ids.items()}))
    return path
