"""DAPO's dynamic sampling in the GRPO loop: groups without a reward difference are dropped
and replaced by the next queries of the stream, within the draw cap."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

from actors.grpo_stage import _batch, draw_groups
from config import load_config
from corpus.tables import Query
from rollout.group import Group, within_staleness

TRAIN = [Query(f"v{i}:q0", f"text {i}", f"v{i}", 0.0, 1.0) for i in range(10)]


def _episode(reward: float, versions=(1,)) -> list:
    return [SimpleNamespace(episode_reward=reward, weight_version=v) for v in versions]


class Pool:
    """Episodes whose rewards are set per query: the queries in `flat` earn one reward in
    every sample, the others differ between samples."""

    def __init__(self, flat: set[str]):
        self.flat, self.asked = flat, []

    async def groups(self, queries, group_size, seed):
        self.asked.append([q.query_id for q in queries])
        return [Group.of([_episode(1.0 if q.query_id in self.flat else float(g))
                          for g in range(group_size)], std_normalize=False) for q in queries]


def _session(pool, **train):
    cfg = load_config("cpu_tiny", ["rollout.group_size=3", "train.queries_per_step=3"])
    cfg = replace(cfg, train=replace(cfg.train, **train))
    return SimpleNamespace(cfg=cfg, pool=pool, retriever=None,
                           corpus=SimpleNamespace(video_path=lambda v: v))


def test_episodes_older_than_the_staleness_bound_are_dropped():
    """An episode goes when any of its turns is more than k versions old; a group left empty
    goes; the advantages stay the whole group's."""
    old = Group.of([_episode(0.0, (3, 4)), _episode(1.0, (4,))], std_normalize=False)
    gone = Group.of([_episode(0.0, (2,)), _episode(1.0, (2,))], std_normalize=False)
    kept, dropped = within_staleness([old, gone], version=4, k=0)
    assert dropped == 3 and len(kept) == 1
    assert kept[0].advantages == [0.5] and kept[0].episodes == [old.episodes[1]]
    kept, dropped = within_staleness([old, gone], version=4, k=1)
    assert dropped == 2 and kept[0].advantages == [-0.5, 0.5]
    assert within_staleness([old, gone], version=4, k=2) == ([old, gone], 0)


def test_flat_groups_are_replaced_by_the_next_queries():
    stream = [q.query_id for q in _batch(TRAIN, 4, 6, seed=0)]
    pool = Pool(flat=set(stream[:2]))  # the step's first two queries teach nothing
    draw = asyncio.run(draw_groups(_session(pool), TRAIN, position=4, step=0))
    assert pool.asked == [stream[:3], stream[3:5]]
    assert [g.episodes[0][0].episode_reward for g in draw.kept] == [0.0, 0.0, 0.0]
    assert draw.queries_drawn == 5 and len(draw.episodes) == 5 * 3
    assert abs(draw.dropped_fraction - 2 / 5) < 1e-12


def test_the_draw_cap_ends_a_step_with_fewer_groups():
    pool = Pool(flat={q.query_id for q in TRAIN})
    draw = asyncio.run(draw_groups(_session(pool, max_query_draws=2), TRAIN, position=0, step=0))
    assert draw.kept == [] and draw.queries_drawn == 6 and draw.dropped_fraction == 1.0
    assert len(pool.asked) == 2


def test_without_dynamic_sampling_every_group_is_kept():
    pool = Pool(flat={q.query_id for q in TRAIN})
    draw = asyncio.run(draw_groups(_session(pool, dynamic_sampling=False), TRAIN, 0, step=0))
    assert len(draw.kept) == 3 and draw.queries_drawn == 3 and draw.dropped_fraction == 0.0


def test_a_draw_cap_below_one_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="train.max_query_draws must be >= 1, got 0"):
        asyncio.run(draw_groups(_session(Pool(set()), max_query_draws=0), TRAIN, 0, step=0))
