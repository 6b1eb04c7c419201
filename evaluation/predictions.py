"""Episode turns -> the predictions table that metrics and submission writers read: the
trajectory schema's columns that describe what was shown, answered and rewarded."""

from __future__ import annotations

import pyarrow as pa

from rollout.trajectory import Turn, turns_to_table

PREDICTION_COLUMNS = [
    "query_id", "turn", "query_text", "gt_video_id", "gt_start", "gt_end", "video_id",
    "answer", "pred_start", "pred_end", "is_final", "retrieved_ids", "retrieved_scores",
    "response_text", "reward", "episode_reward",
]


def predictions_table(episodes: list[list[Turn]]) -> pa.Table:
    return turns_to_table([t for turns in episodes for t in turns]).select(PREDICTION_COLUMNS)
