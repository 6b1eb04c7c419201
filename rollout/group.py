"""A GRPO group: the G episodes of one query, finished together, with their advantages.

Advantages are computed here, while the group is still one object (in the rollout actor that
ran it), so what reaches the learner is already token-level samples (`learner.sample.Sample`):
nothing downstream regroups turns by id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.losses import group_advantages
from learner.sample import Sample
from rollout.trajectory import Turn


def episode_reward(turns: list[Turn]) -> float:
    """The scalar GRPO compares within a group (rollout.rewards.episode_total)."""
    return float(turns[-1].episode_reward) if turns else 0.0


@dataclass
class Group:
    episodes: list[list[Turn]]  # episodes[g] = the turns of sample g
    advantages: list[float]  # one per episode

    @classmethod
    def of(cls, episodes: list[list[Turn]], std_normalize: bool) -> Group:
        rewards = torch.tensor([episode_reward(e) for e in episodes], dtype=torch.float64)
        return cls(episodes, group_advantages(rewards, len(episodes), std_normalize).tolist())

    @property
    def rewards(self) -> list[float]:
        return [episode_reward(e) for e in self.episodes]

    @property
    def informative(self) -> bool:
        """Whether the episodes earned different rewards: only then is any advantage non-zero."""
        return max(self.rewards) - min(self.rewards) > 1e-9

    @property
    def turns(self) -> list[Turn]:
        return [t for episode in self.episodes for t in episode]

    def samples(self) -> list[Sample]:
        """Every turn as a learner sample carrying its episode's advantage."""
        return [Sample(prompt_ids=t.prompt_ids, response_ids=t.response_ids,
                       sampled_logprobs=t.sampling_logprobs, advantage=adv,
                       video_path=t.video_path or None, frame_times=t.frame_times,
                       weight_version=t.weight_version,
                       latent_action=t.soft_tokens if t.latent_mean else None,
                       query_text=t.query_text, refined_vectors=t.refined_vectors or None,
                       episode_id=t.episode_id)
                for episode, adv in zip(self.episodes, self.advantages, strict=True)
                for t in episode]


def groups_of(turns: list[Turn], std_normalize: bool) -> list[Group]:
    """Groups rebuilt from turns stored flat (a saved rollout Parquet, benchmark turns), by
    query and then episode id, in first-seen order."""
    by_query: dict[str, dict[str, list[Turn]]] = {}
    for t in turns:
        by_query.setdefault(t.query_id, {}).setdefault(t.episode_id, []).append(t)
    return [Group.of(list(episodes.values()), std_normalize) for episodes in by_query.values()]


def samples_of(turns: list[Turn], std_normalize: bool) -> list[Sample]:
    return [s for g in groups_of(turns, std_normalize) for s in g.samples()]


def within_staleness(groups: list[Group], version: int, k: int) -> tuple[list[Group], int]:
    """The groups without the episodes any of whose turns was sampled more than k weight
    versions before `version` (a group left empty goes), and how many episodes went. The
    advantages stay as the whole group computed them."""
    kept, dropped = [], 0
    for g in groups:
        fresh = [i for i, e in enumerate(g.episodes)
                 if version - min(t.weight_version for t in e) <= k]
        dropped += len(g.episodes) - len(fresh)
        if fresh:
            kept.append(Group([g.episodes[i] for i in fresh], [g.advantages[i] for i in fresh]))
    return kept, dropped
