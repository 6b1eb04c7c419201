"""Micro-batching for an asyncio server: concurrent calls become one batched call.

The agent loop searches one query per episode, with many episodes in flight; encoding and
scanning them one by one wastes the embedder's and FAISS's batch efficiency. (Ray Serve's
`serve.batch` does this inside a deployment only.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Coalescer:
    """Calls arriving within `wait_s` of the first (up to `max_items`) share one `run(items)`.

    `run` returns one result per item, in order; its exception fails every call it served.
    """

    def __init__(self, run: Callable[[list], Awaitable[list]], max_items: int = 256,
                 wait_s: float = 0.002):
        self.run, self.max_items, self.wait_s = run, max_items, wait_s
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()  # strong references until done

    async def __call__(self, item):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_items:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.ensure_future(self._serve(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await self.run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run returned {len(results)} results for {len(batch)} items")
        except Exception as e:  # noqa: BLE001 - handed to every waiting caller
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
