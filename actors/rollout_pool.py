"""Episodes across E PolicyWorkers: placement, versioned weights, retry on death.

Each episode sticks to one worker (its turns share that engine's prefix cache) and
workers are picked least-loaded. A worker that dies mid-episode is restarted by Ray
(`max_restarts`); the pool brings it to the current weight version before it gets
work again, and the episode is re-run from its first turn on a live worker. The
partial turns of the failed attempt are dropped, so a step loses and duplicates no
trajectory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from tqdm.asyncio import tqdm_asyncio

from config.schema import Config
from corpus.tables import Query
from rollout.agent import RetrieverClient, run_episode
from rollout.trajectory import Turn

log = logging.getLogger(__name__)
WORKER_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


class ActorPolicy:
    """PolicyClient over a PolicyWorker handle."""

    def __init__(self, handle):
        self.handle = handle

    async def generate(self, query, video_path, seed, greedy):
        return await self.handle.generate.remote(query, video_path, seed, greedy)

    async def soft_tokens(self, query, response_ids, video_path):
        return await self.handle.soft_tokens.remote(query, response_ids, video_path)


@dataclass
class Weights:
    version: int
    model_ref: ray.ObjectRef  # dict[str, Tensor] in the object store, put once
    heads_ref: ray.ObjectRef | None = None


class WorkerPool:
    def __init__(self, workers: list, cfg: Config, max_attempts: int = 3):
        self.workers = list(workers)
        self.cfg = cfg
        self.max_attempts = max_attempts
        self.weights: Weights | None = None
        self._load = [0] * len(self.workers)
        self.retried_episodes = 0

    async def sync(self, weights: Weights) -> list[float]:
        """Send new weights to every worker (one object-store copy, E readers). Versions are
        the pool's own count of syncs, so SFT, GRPO and resumed runs never reuse one."""
        previous = self.weights.version if self.weights else 0
        self.weights = dataclasses.replace(weights, version=previous + 1)
        return await asyncio.gather(*[self._bring_up_to_date(i) for i in range(len(self.workers))])

    async def _bring_up_to_date(self, i: int) -> float:
        w = self.weights
        if w is None:
            return 0.0
        handle = self.workers[i]
        if await handle.weight_version.remote() == w.version:
            return 0.0
        return await handle.load_weights.remote(w.version, w.model_ref, w.heads_ref)

    async def _wait_alive(self, i: int) -> None:
        for _ in range(120):
            try:
                await self.workers[i].ready.remote()
                await self._bring_up_to_date(i)
                return
            except WORKER_ERRORS:
                await asyncio.sleep(1.0)
        raise RuntimeError(f"policy worker {i} did not come back after a restart")

    async def episode(self, query: Query, sample: int, retriever: RetrieverClient,
                      video_path, seed: int | None, greedy: bool = False) -> list[Turn]:
        last_error: Exception | None = None
        for _attempt in range(self.max_attempts):
            i = min(range(len(self.workers)), key=self._load.__getitem__)
            self._load[i] += 1
            try:
                turns = await run_episode(query, sample, ActorPolicy(self.workers[i]), retriever,
                                          video_path, self.cfg, seed=seed, greedy=greedy)
                self.workers[i].episode_done.remote()
                return turns
            except WORKER_ERRORS as exc:
                last_error = exc
                self.retried_episodes += 1
                log.warning("policy worker %d died during episode %s#%d; retrying", i,
                            query.query_id, sample)
                await self._wait_alive(i)
            finally:
                self._load[i] -= 1
        raise RuntimeError(f"episode {query.query_id}#{sample} failed {self.max_attempts} times") \
            from last_error

    async def groups(self, queries: list[Query], group_size: int, retriever: RetrieverClient,
                     video_path, seed: int, greedy: bool = False,
                     progress: str | None = None) -> list[list[list[Turn]]]:
        """G episodes for each query, all in flight at once; result[q][g] = turns.
        `progress`: a progress bar's label, counting finished episodes."""
        jobs = [[self.episode(q, g, retriever, video_path,
                              None if greedy else seed * 100_003 + qi * 1_009 + g, greedy)
                 for g in range(group_size)] for qi, q in enumerate(queries)]
        flat = await tqdm_asyncio.gather(*[j for group in jobs for j in group], desc=progress,
                                         unit="episode", disable=progress is None)
        return [flat[i * group_size:(i + 1) * group_size] for i in range(len(queries))]
