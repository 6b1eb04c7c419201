"""The GRPO stage: draw groups from the query stream, train, sync, checkpoint; synchronous
(k = 0) or with the next step's rollouts generating while the learner trains
(train.max_staleness k >= 1).

The loop is one asyncio program: rollouts are Ray calls into the PolicyWorkers (their agent
loops run there), the learner's blocking calls run in threads, so a draw running ahead keeps
being served while the learner trains.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from actors.job_state import JobState
from actors.learner import LearnerGroup
from actors.rollout_pool import ObjectStoreSync, WeightBroadcast, weights_from_export
from corpus.tables import Query
from rollout.engine import broadcast_backend
from rollout.group import Group, episode_reward, within_staleness
from rollout.rewards import REWARD_PARTS
from rollout.trajectory import Turn, turns_to_table

if TYPE_CHECKING:
    from actors.driver import Session


def _batch(train: list[Query], position: int, size: int, seed: int) -> list[Query]:
    """Queries position..position+size of an endless, epoch-wise shuffled stream: the
    data position alone says where a resumed job continues."""
    out = []
    for p in range(position, position + size):
        epoch, i = divmod(p, len(train))
        order = np.random.default_rng([seed, epoch]).permutation(len(train))
        out.append(train[order[i]])
    return out


@dataclass
class Draw:
    """One GRPO step's rollouts: the groups the learner trains on, every episode generated
    (for the step's reward means), and how far the query stream advanced."""
    kept: list[Group]
    episodes: list[list[Turn]]
    queries_drawn: int

    @property
    def dropped_fraction(self) -> float:
        return 1.0 - len(self.kept) / self.queries_drawn


async def draw_groups(s: Session, train: list[Query], position: int, step: int) -> Draw:
    """queries_per_step groups from the query stream at `position`; with dynamic sampling,
    groups without a reward difference are dropped and replaced by the next queries, at most
    max_query_draws rounds of queries_per_step."""
    cfg = s.cfg.train
    G, P = s.cfg.rollout.group_size, cfg.queries_per_step
    if cfg.max_query_draws < 1:
        raise ValueError(f"train.max_query_draws must be >= 1, got {cfg.max_query_draws}")
    kept, episodes, drawn = [], [], 0
    for round_ in range(cfg.max_query_draws if cfg.dynamic_sampling else 1):
        need = P - len(kept)
        queries = _batch(train, position + drawn, need, cfg.seed)
        groups = await s.pool.groups(queries, G, seed=cfg.seed * 7919 + step + 104_729 * round_)
        drawn += need
        episodes += [turns for group in groups for turns in group.episodes]
        kept += [g for g in groups if g.informative or not cfg.dynamic_sampling]
        if len(kept) == P:
            break
    return Draw(kept, episodes, drawn)


def save_rollouts(folder: Path, step: int, turns, every: int) -> Path | None:
    """Every turn of every `every`-th GRPO step as Parquet (rollout.trajectory schema): what
    the learner trained on, for looking into a run afterwards."""
    if every <= 0 or step % every:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"grpo_{step:06d}.parquet"
    pq.write_table(turns_to_table(turns), path)
    return path


def _reward_means(episodes) -> dict[str, float]:
    parts = {name: [] for name in (*REWARD_PARTS, "total")}
    for turns in episodes:
        for name in REWARD_PARTS:  # found is the final turn's (an accept ends the episode)
            values = [getattr(t, f"reward_{name}") for t in turns]
            parts[name].append(values[-1] if name == "found" else np.mean(values))
        parts["total"].append(episode_reward(turns))
    return {k: float(np.mean(v)) for k, v in parts.items()}


class Stop:
    """SIGTERM (ray job stop, preemption) asks the loop to checkpoint and leave."""

    requested = False

    @classmethod
    def install(cls) -> None:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: setattr(cls, "requested", True))


def stage_grpo(s: Session, train: list[Query], state: JobState, resume: bool) -> dict:
    cfg = s.cfg
    start_dir = state.get("sft_export") or str(s.policy_dir)
    learner = LearnerGroup(cfg)
    learner.build("grpo", start_dir, cfg=learner.with_learner(lr=cfg.learner.grpo_lr or cfg.learner.lr))
    step, driver_state = 0, {}
    ckpt = state.get("grpo_checkpoint")
    if resume and ckpt:
        driver_state = learner.load(ckpt)
        step = int(driver_state["step"])
        print(f"resumed GRPO from {ckpt} at step {step}")
    position = int(driver_state.get("data_position", step * cfg.train.queries_per_step)) \
        if resume and ckpt else 0
    step = asyncio.run(_grpo_steps(s, learner, train, state, step, position))
    export = s.work / "checkpoints" / "grpo_export"
    learner.export_hf(export)
    if s.pool.broadcast is not None:  # from here a restarted worker loads the export
        s.pool.adopt(weights_from_export(export))
    learner.shutdown()
    history = [h for h in s.metrics.history if h["stage"] == "grpo"]
    return {"steps": step, "export": str(export), "stopped": Stop.requested,
            "first_reward": history[0]["reward_total"] if history else None,
            "last_reward": history[-1]["reward_total"] if history else None}


def weight_transport(s: Session, learner: LearnerGroup) -> ObjectStoreSync | WeightBroadcast:
    """What the GRPO loop syncs through, by `rollout.weight_transport`: a broadcast into the
    engines (nccl, gloo), or the learner's tensors through the object store."""
    backend = broadcast_backend(s.cfg.rollout)
    if backend is None:
        return ObjectStoreSync(s.pool, s.router, learner)
    return WeightBroadcast(s.pool, s.router, learner, backend)


async def _grpo_steps(s: Session, learner: LearnerGroup, train: list[Query], state: JobState,
                      step: int, position: int) -> int:
    """GRPO steps from `step` on; returns the step reached. With train.max_staleness k >= 1
    the next step's draw runs while this step trains and syncs (`ahead`); its episodes carry
    the weight version they were sampled with, and those more than k versions old are
    dropped. The learner's blocking calls run in threads so the event loop keeps serving it."""
    cfg, k = s.cfg, s.cfg.train.max_staleness
    transport = weight_transport(s, learner)
    await transport.sync(changed_only=False)
    bar = tqdm(total=cfg.train.grpo_steps, initial=step, desc="grpo", unit="step")
    ahead: asyncio.Task | None = None
    try:
        while step < cfg.train.grpo_steps and not Stop.requested:
            started = time.perf_counter()
            draw = await (ahead or draw_groups(s, train, position, step))
            position += draw.queries_drawn
            rollout_s = time.perf_counter() - started
            ahead = asyncio.create_task(draw_groups(s, train, position, step + 1)) \
                if k and step + 1 < cfg.train.grpo_steps else None
            version = s.pool.weights.version
            kept, stale_dropped = within_staleness(draw.kept, version, k)
            turns = [t for group in kept for t in group.turns]
            save_rollouts(s.work / "rollouts", step, turns, cfg.train.save_rollouts_every)
            rewards = _reward_means(draw.episodes)
            # no group with a reward difference in any draw: nothing to learn, the weights stay
            samples = [x for group in kept for x in group.samples()]
            async with transport.lock:  # a restarted worker's catch-up waits for the round
                metrics = await asyncio.to_thread(learner.grpo_step, samples, version) \
                    if samples else {}
                sync_started = time.perf_counter()
                if samples:
                    await transport.sync(changed_only=True)
            metrics |= {f"reward_{name}": v for name, v in rewards.items()}
            metrics |= {"rollout_seconds": rollout_s,
                        "sync_seconds": time.perf_counter() - sync_started,
                        "step_total_seconds": time.perf_counter() - started,
                        "turns_per_episode": float(np.mean([len(e) for e in draw.episodes])),
                        "groups_dropped_fraction": draw.dropped_fraction,
                        "queries_drawn": draw.queries_drawn,
                        "stale_episodes_dropped": stale_dropped,
                        "staleness": float(np.mean([version - x.weight_version for x in samples]))
                        if samples else 0.0}
            s.metrics.rewards(rewards, step)
            s.metrics.learner_step(metrics, stage="grpo", step=step)
            step += 1
            bar.update(1)
            bar.set_postfix(reward=f"{rewards['total']:.3f}")
            if step % cfg.learner.checkpoint_every == 0 or step == cfg.train.grpo_steps \
                    or Stop.requested:
                # the draw running ahead is not part of the state: a resumed job draws it again
                path = await asyncio.to_thread(learner.save, s.work / "checkpoints" / "grpo",
                                               {"step": step, "data_position": position})
                state.update(grpo_checkpoint=path, grpo_step=step)
    finally:
        bar.close()
        if ahead is not None:
            ahead.cancel()
    return step
