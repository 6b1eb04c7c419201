"""GRPO groups across E PolicyWorkers: placement, versioned weights, retry on death.

The driver asks for groups, not turns: each group runs whole on one worker (its episodes
share that engine's prefix cache, and their advantages are computed there), workers picked
least-loaded. A worker that dies mid-group is restarted by Ray (`max_restarts`); the pool
brings it to the current weight version before it gets work again, and the group is re-run
from its first turn on a live worker. The partial episodes of the failed attempt never left
the dead worker, so a step loses and duplicates no trajectory.
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
from rollout.group import Group

log = logging.getLogger(__name__)
WORKER_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class Weights:
    version: int
    model_ref: ray.ObjectRef  # dict[str, Tensor] in the object store, put once
    heads_ref: ray.ObjectRef | None = None  # None: the heads did not change
    full: bool = True  # every tensor; else only those that changed since the last full one


class WorkerPool:
    def __init__(self, workers: list, cfg: Config, max_attempts: int = 3):
        self.workers = list(workers)
        self.cfg = cfg
        self.max_attempts = max_attempts
        self.weights: Weights | None = None  # the latest
        self.base: Weights | None = None  # the latest full one, for a worker that restarted
        self._load = [0] * len(self.workers)
        self._loading: tuple[asyncio.AbstractEventLoop, list[asyncio.Lock]] | None = None
        self.retried_groups = 0

    async def sync(self, weights: Weights) -> list[float]:
        """Send new weights to every worker (one object-store copy, E readers). Versions are
        the pool's own count of syncs, so SFT, GRPO and resumed runs never reuse one. A worker
        that dies meanwhile is brought up to date when it is next given work."""
        previous = self.weights.version if self.weights else 0
        if not weights.full and self.base is None:
            raise ValueError("the first weights a pool sends must be full")
        self.weights = dataclasses.replace(weights, version=previous + 1)
        if weights.full:
            self.base = self.weights
        seconds = await asyncio.gather(*[self._bring_up_to_date(i) for i in range(len(self.workers))],
                                       return_exceptions=True)
        for s in seconds:
            if isinstance(s, BaseException) and not isinstance(s, WORKER_ERRORS):
                raise s
        return [0.0 if isinstance(s, BaseException) else s for s in seconds]

    async def _bring_up_to_date(self, i: int) -> float:
        """Loads what worker i lacks: the latest full weights first if it is older than them
        (a restarted worker holds the initial ones), then the latest changes."""
        async with self._load_lock(i):
            w, handle, seconds = self.weights, self.workers[i], 0.0
            if w is None:
                return 0.0
            have = await handle.weight_version.remote()
            if have == w.version:
                return 0.0
            base = self.base
            if have < base.version and base is not w:
                seconds += await handle.load_weights.remote(base.version, base.model_ref,
                                                            base.heads_ref)
            return seconds + await handle.load_weights.remote(w.version, w.model_ref, w.heads_ref)

    def _load_lock(self, i: int) -> asyncio.Lock:
        """One load at a time per worker, so a group dispatched during a sync waits for that
        load instead of sending the same weights again. Per event loop: the pool outlives the
        loops the driver's stages run (an asyncio lock belongs to one)."""
        loop = asyncio.get_running_loop()
        if self._loading is None or self._loading[0] is not loop:
            self._loading = (loop, [asyncio.Lock() for _ in self.workers])
        return self._loading[1][i]

    async def _wait_alive(self, i: int) -> None:
        for _ in range(120):
            try:
                await self.workers[i].ready.remote()
                await self._bring_up_to_date(i)
                return
            except WORKER_ERRORS:
                await asyncio.sleep(1.0)
        raise RuntimeError(f"policy worker {i} did not come back after a restart")

    async def group(self, query: Query, seeds: list[int | None], greedy: bool = False) -> Group:
        last_error: Exception | None = None
        for _attempt in range(self.max_attempts):
            i = min(range(len(self.workers)), key=self._load.__getitem__)
            self._load[i] += 1
            try:
                await self._bring_up_to_date(i)  # it may have restarted while idle
                return await self.workers[i].run_group.remote(query, seeds, greedy)
            except WORKER_ERRORS as exc:
                last_error = exc
                self.retried_groups += 1
                log.warning("policy worker %d died during the group of %s; retrying", i,
                            query.query_id)
                await self._wait_alive(i)
            finally:
                self._load[i] -= 1
        raise RuntimeError(f"the group of {query.query_id} failed {self.max_attempts} times") \
            from last_error

    async def groups(self, queries: list[Query], group_size: int, seed: int, greedy: bool = False,
                     progress: str | None = None) -> list[Group]:
        """G episodes for each query, all groups in flight at once; result[q] is query q's.
        `progress`: a progress bar's label, counting finished groups."""
        jobs = [self.group(q, [None if greedy else seed * 100_003 + qi * 1_009 + g
                               for g in range(group_size)], greedy)
                for qi, q in enumerate(queries)]
        return await tqdm_asyncio.gather(*jobs, desc=progress, unit="group",
                                         disable=progress is None)


async def sync_weights(pool: WorkerPool, router, weights: Weights) -> None:
    """Workers take the model and heads; the query encoder (`router`) takes the heads (its
    append projector turns soft tokens into embedder inputs)."""
    await pool.sync(weights)
    if weights.heads_ref is not None:
        await router.load_heads.remote(weights.heads_ref)
