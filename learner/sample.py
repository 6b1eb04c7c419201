"""The token-level contract between rollout and learner: one generated turn, ready to train on.

The rollout side (`rollout.group.Group.samples`) builds these while a GRPO group is still
together, advantages included, so the learner never regroups episodes or reads rewards; it
re-decodes the video from `video_path` at `frame_times` and recomputes log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sample:
    prompt_ids: list[int]  # as the engine saw them (vision placeholders expanded)
    response_ids: list[int]
    sampled_logprobs: list[float]  # the behaviour policy's log-probs of response_ids
    advantage: float  # the episode's group-relative advantage (every turn of it the same)
    video_path: str | None  # None for text-only turns (benchmarks)
    frame_times: list[float]
    weight_version: int  # the policy version that generated the turn
    latent_action: list[list[float]] | None = None  # [N, D] a sampled soft-token action
    # InfoNCE of the refined query in GRPO: the query text and the index's vectors of the
    # ground truth then its negatives [1 + K, D_emb]; None where the turn did not refine
    query_text: str = ""
    refined_vectors: list[list[float]] | None = None
    episode_id: str = ""  # for log lines only

    def __post_init__(self) -> None:
        if len(self.sampled_logprobs) != len(self.response_ids):
            raise ValueError(f"sample {self.episode_id}: {len(self.sampled_logprobs)} log-probs "
                             f"for {len(self.response_ids)} response tokens")
