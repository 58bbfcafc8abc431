"""The dynamic batcher: batching window, size limit, full queue, deadlines and error fan-out."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from guard.protocol.errors import DeadlineExceeded, InvalidInput, QueueFull
from guard.serving.batching import DynamicBatcher
from guard.serving.model_config import BatchingConfig


class Recorder:
    """An execute function that records each batch (and the thread and deadline it saw) and can be
    held or made to fail. It runs on the batcher's worker thread."""

    def __init__(self):
        self.batches: list[list] = []
        self.threads: list[str] = []
        self.deadlines: list[float | None] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def __call__(self, payloads, deadline):
        self.batches.append(list(payloads))
        self.threads.append(threading.current_thread().name)
        self.deadlines.append(deadline)
        assert self.gate.wait(10), "test gate never opened"
        if self.fail:
            raise self.fail
        return [p * 10 for p in payloads]


async def started(config: BatchingConfig, recorder: Recorder, inline_below: int = 0) -> DynamicBatcher:
    config = BatchingConfig(**{**config.__dict__, "inline_below_microseconds": inline_below})
    batcher = DynamicBatcher(recorder, config, executor=ThreadPoolExecutor(config.instances, "batch"))
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
    """Two instances: the first batch waits until a second runs beside it (so two do run at once,
    however the threads are scheduled), and no third ever joins them."""
    active, peak, lock, pair = 0, 0, threading.Lock(), threading.Event()

    def execute(payloads, deadline):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active == 2:
                pair.set()
        assert pair.wait(10), "a second batch never ran beside the first"
        with lock:
            active -= 1
        return payloads

    config = BatchingConfig(max_batch_size=1, instances=2)
    batcher = DynamicBatcher(execute, config, executor=ThreadPoolExecutor(2))
    await asyncio.gather(*(batcher.submit(i, 1) for i in range(8)))
    assert peak == 2
    await batcher.close()


async def test_execute_sees_the_latest_deadline_of_its_batch():
    rec = Recorder()
    batcher = await started(BatchingConfig(max_batch_size=8, max_queue_delay_microseconds=50_000), rec)
    now = asyncio.get_running_loop().time()
    await asyncio.gather(batcher.submit(1, 1, deadline=now + 30), batcher.submit(2, 1, deadline=now + 20))
    await asyncio.gather(batcher.submit(1, 1, deadline=now + 30), batcher.submit(3, 1))
    assert rec.deadlines == [pytest.approx(now + 30), None]  # none: one request waits forever
    await batcher.close()


async def test_fast_batches_move_onto_the_event_loop_thread_and_slow_ones_back():
    rec = Recorder()
    batcher = await started(BatchingConfig(max_batch_size=1), rec, inline_below=50_000)
    loop_thread = threading.current_thread().name
    for i in range(5):
        assert await batcher.submit(i, 1) == i * 10
    # The first batch is measured on a worker; once the mean is known to be fast, batches run inline.
    assert rec.threads[0] != loop_thread
    assert rec.threads[-1] == loop_thread and batcher.inline
    batcher.mean_execute_seconds = 1.0  # as if batches had become slow
    await batcher.submit(9, 1)
    assert rec.threads[-1] != loop_thread
    await batcher.close()


async def test_inline_batches_keep_window_deadline_and_error_semantics():
    rec = Recorder()
    # No executor: every batch runs on the loop thread.
    batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=8, max_queue_delay_microseconds=20_000))
    assert await asyncio.gather(*(batcher.submit(i, 1) for i in range(3))) == [0, 10, 20]
    assert rec.batches == [[0, 1, 2]]
    rec.fail = RuntimeError("inline failure")
    with pytest.raises(RuntimeError, match="inline failure"):
        await batcher.submit(5, 1)
    rec.fail = None
    assert await batcher.submit(6, 1) == 60
    await batcher.close()
