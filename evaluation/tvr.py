"""Write predictions in the TVRetrieval standalone-eval submission format.

The file is one JSON object::

    {
      "video2idx": {"<video_id>": <int idx>, ...},
      "VCMR": [
        {"desc_id": <query id>, "desc": "<query text, when known>",
         "predictions": [[<video idx>, <start s>, <end s>, <score>], ...]},
        ...
      ]
    }

``predictions`` is a ranked list; the agent commits to one moment per query, so it holds a
single entry from the query's final turn: the top-1 retrieved video with the predicted span,
or [0, 0] when the policy gave none (a not_matched answer is still a retrieval result, and
leaving it out would score as a miss on VR-style evaluation). The score is the row's
``score`` when present, else 1.0. Query ids are written as given: the original data may use
ints where this table holds strings, and the evaluator must see the same ids as the
ground-truth file it is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from evaluation.metrics import Row, as_rows, final_rows


def _seconds(value: Any) -> float | None:
    """A usable time, or None: JSON has no NaN, and the evaluator cannot rank one."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _entry(row: Row, video2idx: dict[str, int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"desc_id": row["query_id"]}
    if row.get("query_text") is not None:
        entry["desc"] = row["query_text"]
    vid = row["video_id"]
    if vid is None:
        entry["predictions"] = []
        return entry
    if vid not in video2idx:
        raise ValueError(f"query {row['query_id']!r}: video {vid!r} is not in video_ids")
    start, end = _seconds(row.get("pred_start")), _seconds(row.get("pred_end"))
    if start is None or end is None:
        start = end = 0.0
    scores = row.get("retrieved_scores")
    score = float(scores[0]) if scores else 1.0
    entry["predictions"] = [[video2idx[vid], start, end, score]]
    return entry


def write_tvr_submission(
    preds: pa.Table | Iterable[Row], path: str | Path, video_ids: list[str]
) -> Path:
    video2idx = {vid: i for i, vid in enumerate(video_ids)}
    submission = {
        "video2idx": video2idx,
        "VCMR": [_entry(row, video2idx) for row in final_rows(as_rows(preds))],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission, allow_nan=False))
    return path
