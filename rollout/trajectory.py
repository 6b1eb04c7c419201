"""Trajectory records: one row per turn, Arrow-serialisable.

A turn keeps what the learner needs to recompute it (prompt ids as the engine saw
them, the video to re-decode with the same sampling, the response ids and the loss
mask over generated tokens) and what the sampler produced (log-probs, soft tokens,
retrieval results, the weight version it used).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import pyarrow as pa

TURN_SCHEMA = pa.schema([
    ("episode_id", pa.string()),  # f"{query_id}#{sample}"
    ("query_id", pa.string()),
    ("sample", pa.int32()),  # index inside the GRPO group
    ("turn", pa.int32()),  # 1-based
    ("query_text", pa.string()),
    ("gt_video_id", pa.string()),
    ("gt_start", pa.float64()),
    ("gt_end", pa.float64()),
    ("video_id", pa.string()),  # the top-1 shown in this turn
    ("video_path", pa.string()),
    ("frame_times", pa.list_(pa.float64())),  # the decoded frames' timestamps
    ("retrieved_ids", pa.list_(pa.string())),
    ("retrieved_scores", pa.list_(pa.float32())),
    ("prompt_ids", pa.list_(pa.int32())),  # vision placeholders expanded
    ("response_ids", pa.list_(pa.int32())),
    ("sampling_logprobs", pa.list_(pa.float32())),
    ("loss_mask", pa.list_(pa.int8())),  # over prompt_ids + response_ids: 1 = generated
    ("response_text", pa.string()),
    ("answer", pa.string()),
    ("pred_start", pa.float64()),
    ("pred_end", pa.float64()),
    ("soft_tokens", pa.list_(pa.list_(pa.float32()))),  # [N, D], empty when none
    ("refined_scores", pa.list_(pa.float32())),  # [pos, negs...] of the refined query
    ("reward_format", pa.float64()),
    ("reward_verification", pa.float64()),
    ("reward_retrieval", pa.float64()),
    ("reward_grounding", pa.float64()),
    ("reward_found", pa.float64()),
    ("reward", pa.float64()),
    ("episode_reward", pa.float64()),
    ("is_final", pa.bool_()),
    ("weight_version", pa.int64()),
])


@dataclass
class Turn:
    episode_id: str
    query_id: str
    sample: int
    turn: int
    query_text: str
    gt_video_id: str
    gt_start: float
    gt_end: float
    video_id: str
    video_path: str
    frame_times: list[float]
    retrieved_ids: list[str]
    retrieved_scores: list[float]
    prompt_ids: list[int]
    response_ids: list[int]
    sampling_logprobs: list[float]
    response_text: str
    answer: str | None = None
    pred_start: float | None = None
    pred_end: float | None = None
    soft_tokens: list[list[float]] = field(default_factory=list)
    refined_scores: list[float] = field(default_factory=list)
    reward_format: float = 0.0
    reward_verification: float = 0.0
    reward_retrieval: float = 0.0
    reward_grounding: float = 0.0
    reward_found: float = 0.0  # 1.0 when the turn accepted the ground-truth video
    reward: float = 0.0
    episode_reward: float = 0.0  # what GRPO normalises; every turn of an episode holds it
    is_final: bool = False
    weight_version: int = 0

    @property
    def loss_mask(self) -> list[int]:
        return [0] * len(self.prompt_ids) + [1] * len(self.response_ids)

    def to_row(self) -> dict:
        row = asdict(self)
        row["loss_mask"] = self.loss_mask
        return row


def turns_to_table(turns: list[Turn]) -> pa.Table:
    return pa.Table.from_pylist([t.to_row() for t in turns], schema=TURN_SCHEMA)


def table_to_turns(table: pa.Table) -> list[Turn]:
    names = {f.name for f in fields(Turn)}
    return [Turn(**{k: v for k, v in row.items() if k in names}) for row in table.to_pylist()]
