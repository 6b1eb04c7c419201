import asyncio

import pytest

from retrieval_service.coalesce import Coalescer


def test_concurrent_calls_share_one_batch_and_keep_their_order():
    batches = []

    async def run(items):
        batches.append(list(items))
        await asyncio.sleep(0)
        return [x * 10 for x in items]

    async def main():
        c = Coalescer(run, max_items=4, wait_s=0.01)
        first = await asyncio.gather(*[c(i) for i in range(10)])
        alone = await c(99)
        return first, alone

    first, alone = asyncio.run(main())
    assert first == [i * 10 for i in range(10)] and alone == 990
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [99]]


def test_an_error_reaches_every_caller_of_its_batch_only():
    async def run(items):
        if "bad" in items:
            raise ValueError("bad item")
        return items

    async def main():
        c = Coalescer(run, wait_s=0.01)
        together = await asyncio.gather(c("a"), c("bad"), return_exceptions=True)
        return together, await c("b")

    together, later = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in together) and later == "b"


def test_results_must_match_the_items():
    async def main():
        return await Coalescer(lambda items: asyncio.sleep(0, result=[]), wait_s=0)(1)

    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        asyncio.run(main())
