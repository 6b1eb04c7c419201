"""Trajectory records: one row per turn, Arrow-serialisable.

A turn keeps what the learner needs to recompute it (prompt ids as the engine saw
them, the video to re-decode with the same sampling, the response ids and the loss
mask over generated tokens) and what the sampler produced (log-probs, soft tokens,
retrieval results, the weight version it used).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

import pyarrow as pa


def column(arrow: pa.DataType, default=MISSING, **kwargs):
    """A Turn field and its Arrow type, declared together so the schema cannot drift."""
    if isinstance(default, list):
        kwargs["default_factory"] = list
    elif default is not MISSING:
        kwargs["default"] = default
    return field(metadata={"arrow": arrow}, **kwargs)


@dataclass
class Turn:
    episode_id: str = column(pa.string())  # f"{query_id}#{sample}"
    query_id: str = column(pa.string())
    sample: int = column(pa.int32())  # index inside the GRPO group
    turn: int = column(pa.int32())  # 1-based
    query_text: str = column(pa.string())
    gt_video_id: str = column(pa.string())
    gt_start: float = column(pa.float64())
    gt_end: float = column(pa.float64())
    video_id: str = column(pa.string())  # the top-1 shown in this turn
    video_path: str = column(pa.string())
    frame_times: list[float] = column(pa.list_(pa.float64()))  # the decoded frames' timestamps
    retrieved_ids: list[str] = column(pa.list_(pa.string()))
    retrieved_scores: list[float] = column(pa.list_(pa.float32()))
    prompt_ids: list[int] = column(pa.list_(pa.int32()))  # vision placeholders expanded
    response_ids: list[int] = column(pa.list_(pa.int32()))
    sampling_logprobs: list[float] = column(pa.list_(pa.float32()))
    response_text: str = column(pa.string())
    answer: str | None = column(pa.string(), None)
    pred_start: float | None = column(pa.float64(), None)
    pred_end: float | None = column(pa.float64(), None)
    soft_tokens: list[list[float]] = column(pa.list_(pa.list_(pa.float32())), [])  # [N, D] searched
    # The latent policy (sqr.latent_sigma > 0): the mean the action was drawn around, and the
    # action's log-density under it (the behaviour policy's), else empty / None.
    latent_mean: list[list[float]] = column(pa.list_(pa.list_(pa.float32())), [])
    latent_logprob: float | None = column(pa.float64(), None)
    refined_scores: list[float] = column(pa.list_(pa.float32()), [])  # [pos, negs...] refined
    # The index's vectors of those videos, kept when GRPO trains the refined query with InfoNCE
    # (sqr.latent_infonce_lambda > 0 under the latent policy), else empty.
    refined_vectors: list[list[float]] = column(pa.list_(pa.list_(pa.float32())), [])
    # One per rollout.rewards.REWARD_PARTS, weighted; found is 1.0 when the turn accepted the
    # ground-truth video.
    reward_format: float = column(pa.float64(), 0.0)
    reward_verification: float = column(pa.float64(), 0.0)
    reward_retrieval: float = column(pa.float64(), 0.0)
    reward_grounding: float = column(pa.float64(), 0.0)
    reward_found: float = column(pa.float64(), 0.0)
    reward: float = column(pa.float64(), 0.0)
    # What GRPO normalises; every turn of an episode holds it.
    episode_reward: float = column(pa.float64(), 0.0)
    is_final: bool = column(pa.bool_(), False)
    weight_version: int = column(pa.int64(), 0)

    @property
    def loss_mask(self) -> list[int]:
        return [0] * len(self.prompt_ids) + [1] * len(self.response_ids)

    def to_row(self) -> dict:
        row = asdict(self)
        row["loss_mask"] = self.loss_mask
        return row


# loss_mask: over prompt_ids + response_ids, 1 = generated (derived, written for readers).
TURN_SCHEMA = pa.schema([(f.name, f.metadata["arrow"]) for f in fields(Turn)]
                        + [("loss_mask", pa.list_(pa.int8()))])


def turns_to_table(turns: list[Turn]) -> pa.Table:
    return pa.Table.from_pylist([t.to_row() for t in turns], schema=TURN_SCHEMA)


def table_to_turns(table: pa.Table) -> list[Turn]:
    names = {f.name for f in fields(Turn)}
    return [Turn(**{k: v for k, v in row.items() if k in names}) for row in table.to_pylist()]
