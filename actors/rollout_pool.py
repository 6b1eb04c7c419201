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
from pathlib import Path

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
    model_ref: ray.ObjectRef | None  # dict[str, Tensor], put once; None: broadcast already
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
        # Set while the latest weights were broadcast (WeightBroadcast): the engines hold them
        # and the object store does not, so a worker that restarted is caught up through it.
        self.broadcast: WeightBroadcast | None = None

    async def sync(self, weights: Weights) -> list[float]:
        """Send new weights to every worker (one object-store copy, E readers). Versions are
        the pool's own count of syncs, so SFT, GRPO and resumed runs never reuse one. A worker
        that dies meanwhile is brought up to date when it is next given work."""
        if not weights.full and self.base is None:
            raise ValueError("the first weights a pool sends must be full")
        self.broadcast = None
        self.weights = dataclasses.replace(weights, version=self.next_version)
        if weights.full:
            self.base = self.weights
        seconds = await asyncio.gather(*[self._bring_up_to_date(i) for i in range(len(self.workers))],
                                       return_exceptions=True)
        for s in seconds:
            if isinstance(s, BaseException) and not isinstance(s, WORKER_ERRORS):
                raise s
        return [0.0 if isinstance(s, BaseException) else s for s in seconds]

    @property
    def next_version(self) -> int:
        return (self.weights.version if self.weights else 0) + 1

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
            if self.broadcast is not None:
                await self.broadcast.catch_up()
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

    def adopt(self, weights: Weights) -> None:
        """The workers already hold these weights (the last broadcast round's, now also in the
        object store): from here a restarted worker loads them like synced ones."""
        self.weights = self.base = dataclasses.replace(weights, version=self.weights.version)
        self.broadcast = None

    async def wait_alive(self, i: int, catch_up: bool = True) -> None:
        for _ in range(120):
            try:
                await self.workers[i].ready.remote()
                if catch_up:
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
                await self.wait_alive(i)
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


class ObjectStoreSync:
    """The learner's tensors through the object store into every worker (`sync_weights`)."""

    def __init__(self, pool: WorkerPool, router, learner):
        self.pool, self.router, self.learner = pool, router, learner
        self.lock = asyncio.Lock()  # as WeightBroadcast's; nothing else takes it

    async def sync(self, changed_only: bool) -> None:
        await sync_weights(self.pool, self.router,
                           await asyncio.to_thread(self.learner.export_weights, changed_only))


def weights_from_export(export: Path) -> Weights:
    """An exported policy directory's tensors, put in the object store (version 0)."""
    from safetensors.torch import load_file

    from models.sqr_heads import SUBDIR, WEIGHTS_FILE

    model = {}
    for part in sorted(export.glob("*.safetensors")):
        model |= load_file(part)
    if not model:
        raise FileNotFoundError(f"no *.safetensors in the export {export}")
    heads = load_file(export / SUBDIR / WEIGHTS_FILE)
    return Weights(version=0, model_ref=ray.put(model), heads_ref=ray.put(heads))


class WeightBroadcast:
    """The broadcast transports (nccl, gloo): learner rank 0 sends into every engine through
    vLLM's weight-transfer API (LearnerGroup.connect_workers / push_weights); the heads, small,
    go through the object store to the workers and the query encoder.

    The group forms at the first round and re-forms with a full round when a worker restarted
    (its process left the group) or died during a round (which fails that round). A worker
    that restarts between rounds is caught up before it gets work: the current version again,
    to the re-formed group. `lock` is held from a GRPO step's update until its round ends, so
    a catch-up never sends weights the pool has not numbered yet."""

    def __init__(self, pool: WorkerPool, router, learner, backend: str, max_attempts: int = 3):
        self.pool, self.router, self.learner, self.backend = pool, router, learner, backend
        self.max_attempts = max_attempts
        self.lock = asyncio.Lock()

    async def sync(self, changed_only: bool) -> None:
        """A new version (the caller holds `lock` if the learner may change meanwhile)."""
        await self._round(self.pool.next_version, changed_only)

    async def catch_up(self) -> None:
        """Every worker to the current version (a no-op when all already hold it)."""
        async with self.lock:
            current = self.pool.weights.version
            versions = await asyncio.gather(*[w.weight_version.remote() for w in self.pool.workers],
                                            return_exceptions=True)
            if any(v != current for v in versions):
                await self._round(current, changed_only=False)

    async def _round(self, version: int, changed_only: bool) -> None:
        pool, last_error = self.pool, None
        for _attempt in range(self.max_attempts):
            joined = await asyncio.gather(*[w.transfer_joined.remote() for w in pool.workers],
                                           return_exceptions=True)
            for i, j in enumerate(joined):
                if isinstance(j, WORKER_ERRORS):
                    await pool.wait_alive(i, catch_up=False)
                elif isinstance(j, BaseException):
                    raise j
            try:
                if last_error is not None or not all(j is True for j in joined):
                    log.info("forming the weight broadcast group (joined: %s)", joined)
                    await asyncio.to_thread(self.learner.connect_workers, pool.workers,
                                            self.backend, pool.cfg.rollout.tensor_parallel_size)
                    changed_only = False
                weights = await asyncio.to_thread(self.learner.push_weights, version,
                                                  changed_only)
                break
            except ray.exceptions.RayError as exc:  # a worker died mid-round: the group broke
                last_error = exc
                log.warning("a weight broadcast failed (%s); re-forming the group", exc)
        else:
            raise RuntimeError(f"the weight broadcast failed {self.max_attempts} times") \
                from last_error
        pool.weights, pool.broadcast = weights, self
        if weights.heads_ref is not None:
            await self.router.load_heads.remote(weights.heads_ref)
