"""WorkerPool's versioned sync: only what changed travels after the first full weights, and a
worker that restarted (holding the initial weights) gets the full ones first."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from actors.rollout_pool import Weights, WorkerPool


class _Remote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)
        return call()


class FakeWorker:
    """Records the weight versions it loaded; `restart` forgets them, as a new process does."""

    def __init__(self):
        self.version, self.loaded = 0, []
        self.weight_version = _Remote(lambda: self.version)
        self.load_weights = _Remote(self._load)

    def _load(self, version, model_ref, heads_ref):
        self.version = version
        self.loaded.append((version, model_ref, heads_ref))
        return 0.1

    def restart(self):
        self.version = 0


def _sync(pool, *weights):
    for w in weights:
        asyncio.run(pool.sync(w))


def test_changes_travel_after_the_full_weights_and_a_restarted_worker_gets_both():
    workers = [FakeWorker(), FakeWorker()]
    pool = WorkerPool(workers, SimpleNamespace())
    _sync(pool, Weights(0, "full", "heads"), Weights(0, "delta1", None, full=False),
          Weights(0, "delta2", None, full=False))
    assert workers[0].loaded == [(1, "full", "heads"), (2, "delta1", None), (3, "delta2", None)]
    assert pool.base.version == 1 and pool.weights.version == 3
    workers[1].restart()
    asyncio.run(pool._bring_up_to_date(1))
    assert workers[1].loaded[-2:] == [(1, "full", "heads"), (3, "delta2", None)]
    assert workers[1].version == 3
    asyncio.run(pool._bring_up_to_date(0))  # already current: nothing sent
    assert len(workers[0].loaded) == 3


def test_a_new_full_sync_becomes_the_base():
    worker = FakeWorker()
    pool = WorkerPool([worker], SimpleNamespace())
    _sync(pool, Weights(0, "full", "heads"), Weights(0, "delta", None, full=False),
          Weights(0, "full2", "heads2"))
    worker.restart()
    asyncio.run(pool._bring_up_to_date(0))
    assert worker.loaded[-1] == (3, "full2", "heads2") and worker.version == 3


def test_the_first_weights_must_be_full():
    pool = WorkerPool([FakeWorker()], SimpleNamespace())
    with pytest.raises(ValueError, match="must be full"):
        asyncio.run(pool.sync(Weights(0, "delta", None, full=False)))
