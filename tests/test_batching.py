"""The dynamic batcher: batching window, size limit, full queue, deadlines and error fan-out."""

import asyncio

import pytest

from guard.batching import DynamicBatcher
from guard.config import BatchingConfig
from guard.errors import DeadlineExceeded, InvalidInput, QueueFull


class Recorder:
    """An execute function that records each batch and can be held or made to fail."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, payloads):
        self.batches.append(list(payloads))
        await self.gate.wait()
        if self.fail:
            raise self.fail
        return [p * 10 for p in payloads]


async def started(config: BatchingConfig, recorder: Recorder) -> DynamicBatcher:
    batcher = DynamicBatcher(recorder, config)
    batcher.start()
    return batcher


async def test_requests_within_the_window_share_one_batch():
    rec = Recorder()
    batcher = await started(BatchingConfig(max_batch_size=8, max_queue_delay_microseconds=200_000), rec)
    results = await asyncio.gather(*(batcher.submit(i, 1) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]
    await batcher.close()


async def test_full_batch_runs_without_waiting_for_the_window():
    rec = Recorder()
    batcher = await started(BatchingConfig(max_batch_size=4, max_queue_delay_microseconds=30_000_000), rec)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(i, 2) for i in range(2))), timeout=5)
    assert loop.time() - start < 5  # far below the 30 s window
    assert rec.batches == [[0, 1]]
    await batcher.close()


async def test_batches_respect_max_rows():
    rec = Recorder()
    batcher = await started(BatchingConfig(max_batch_size=4, max_queue_delay_microseconds=100_000), rec)
    await asyncio.gather(*(batcher.submit(i, 3 if i == 0 else 1) for i in range(6)))
    rows = [sum(3 if p == 0 else 1 for p in batch) for batch in rec.batches]
    assert all(r <= 4 for r in rows)
    assert sorted(p for batch in rec.batches for p in batch) == list(range(6))
    await batcher.close()


async def test_single_request_larger_than_max_batch_is_rejected():
    batcher = await started(BatchingConfig(max_batch_size=4), Recorder())
    with pytest.raises(InvalidInput, match="max_batch_size 4"):
        await batcher.submit(0, 5)
    await batcher.close()


async def test_full_queue_rejects_immediately():
    rec = Recorder()
    rec.gate.clear()  # the first batch blocks, so later requests stay queued
    batcher = await started(BatchingConfig(max_batch_size=1, max_queue_size=2), rec)
    running = asyncio.ensure_future(batcher.submit("a", 1))
    while not rec.batches:
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(batcher.submit(x, 1)) for x in ("b", "c")]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
        await batcher.submit("d", 1)
    rec.gate.set()
    assert await running == "a" * 10
    assert [await q for q in queued] == ["b" * 10, "c" * 10]
    await batcher.close()


async def test_deadline_passing_in_queue_fails_and_never_runs():
    rec = Recorder()
    rec.gate.clear()
    batcher = await started(BatchingConfig(max_batch_size=1), rec)
    loop = asyncio.get_running_loop()
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1))
    while not rec.batches:
        await asyncio.sleep(0.001)
    start = loop.time()
    with pytest.raises(DeadlineExceeded, match="while the request was queued"):
        await batcher.submit("late", 1, deadline=start + 0.05)
    assert loop.time() - start < 1.0  # failed at its deadline, not when the blocker finished
    rec.gate.set()
    await blocker
    await asyncio.sleep(0.02)
    assert ["late"] not in rec.batches
    await batcher.close()


async def test_deadline_already_passed_is_rejected():
    batcher = await started(BatchingConfig(), Recorder())
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(1, 1, deadline=asyncio.get_running_loop().time() - 1)
    await batcher.close()


async def test_batch_error_reaches_every_waiter():
    rec = Recorder()
    rec.fail = RuntimeError("backend exploded")
    batcher = await started(BatchingConfig(max_batch_size=8, max_queue_delay_microseconds=100_000), rec)
    results = await asyncio.gather(*(batcher.submit(i, 1) for i in range(4)), return_exceptions=True)
    assert len(rec.batches) == 1
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
    rec.fail = None
    assert await batcher.submit(7, 1) == 70  # and the batcher keeps serving
    await batcher.close()


async def test_cancelled_request_frees_its_queue_slot():
    rec = Recorder()
    rec.gate.clear()
    batcher = await started(BatchingConfig(max_batch_size=1, max_queue_size=1), rec)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1))
    while not rec.batches:
        await asyncio.sleep(0.001)
    queued = asyncio.ensure_future(batcher.submit("gives-up", 1))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.sleep(0.01)
    replacement = asyncio.ensure_future(batcher.submit("next", 1))  # fits: the slot was freed
    rec.gate.set()
    assert await blocker == "blocker" * 10
    assert await replacement == "next" * 10
    assert all("gives-up" not in batch for batch in rec.batches)
    await batcher.close()


async def test_instances_bound_concurrent_batches():
    active, peak = 0, 0

    async def execute(payloads):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return payloads

    batcher = DynamicBatcher(execute, BatchingConfig(max_batch_size=1, instances=2))
    batcher.start()
    await asyncio.gather(*(batcher.submit(i, 1) for i in range(8)))
    assert peak == 2
    await batcher.close()
