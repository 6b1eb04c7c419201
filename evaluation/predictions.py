"""Episode turns -> the predictions table that metrics and submission writers read."""

from __future__ import annotations

import pyarrow as pa

from rollout.trajectory import Turn

PREDICTION_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("turn", pa.int32()), ("gt_video_id", pa.string()),
    ("gt_start", pa.float64()), ("gt_end", pa.float64()), ("pred_video_id", pa.string()),
    ("answer", pa.string()), ("pred_start", pa.float64()), ("pred_end", pa.float64()),
    ("is_final", pa.bool_()), ("score", pa.float64()), ("desc", pa.string()),
    ("reward", pa.float64()), ("episode_reward", pa.float64()), ("response", pa.string()),
    ("retrieved_ids", pa.list_(pa.string())),  # this turn's ranking (refined: unseen videos)
])


def predictions_table(episodes: list[list[Turn]]) -> pa.Table:
    rows = [{
        "query_id": t.query_id, "turn": t.turn, "gt_video_id": t.gt_video_id,
        "gt_start": t.gt_start, "gt_end": t.gt_end, "pred_video_id": t.video_id,
        "answer": t.answer, "pred_start": t.pred_start, "pred_end": t.pred_end,
        "is_final": t.is_final, "score": t.retrieved_scores[0] if t.retrieved_scores else 0.0,
        "desc": t.query_text, "reward": t.reward,
        "episode_reward": t.episode_reward, "response": t.response_text,
        "retrieved_ids": list(t.retrieved_ids),
    } for turns in episodes for t in turns]
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)
