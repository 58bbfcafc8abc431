"""Per-model dynamic batcher: a bounded queue, a time window, and one result future per request.

Requests join a queue that rejects at once when full. A worker waits for a slot (at most
`instances` batches run at the same time), then gathers requests until the batch is full or the
first request has waited `max_queue_delay_microseconds`, and hands them to `execute` as one batch.
A request whose deadline passes while it is queued fails with DEADLINE_EXCEEDED and never runs.
An error raised by `execute` reaches every request of that batch. Times are the event loop's
monotonic clock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from guard.config import BatchingConfig
from guard.errors import BackendError, DeadlineExceeded, InvalidInput, QueueFull

log = logging.getLogger("guard.batching")


class BatchObserver(Protocol):
    def queue_depth(self, requests: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def batch(self, rows: int) -> None: ...


class _NullObserver:
    def queue_depth(self, requests: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def batch(self, rows: int) -> None: ...


@dataclass(eq=False)
class _Pending:
    payload: Any
    rows: int
    future: asyncio.Future
    enqueued: float
    timer: asyncio.TimerHandle | None = None


class DynamicBatcher:
    def __init__(self, execute: Callable[[list[Any]], Awaitable[list[Any]]], config: BatchingConfig,
                 observer: BatchObserver | None = None):
        self._execute = execute
        self._config = config
        self._observer = observer or _NullObserver()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._rows = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(config.instances)
        self._running: set[asyncio.Task] = set()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="batcher")

    async def submit(self, payload: Any, rows: int, deadline: float | None = None) -> Any:
        """Queue one request of `rows` rows and wait for its result (deadline: loop.time() based)."""
        if rows > self._config.max_batch_size:  # could never be scheduled
            raise InvalidInput(f"batch of {rows} rows exceeds max_batch_size {self._config.max_batch_size}")
        if self._config.max_queue_size and len(self._queue) >= self._config.max_queue_size:
            raise QueueFull(f"Exceeds maximum queue size ({self._config.max_queue_size} requests)")
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            raise DeadlineExceeded("deadline passed before the request was queued")
        item = _Pending(payload, rows, loop.create_future(), loop.time())
        if deadline is not None:
            item.timer = loop.call_at(deadline, self._expire, item)
        self._queue.append(item)
        self._rows += rows
        self._observer.queue_depth(len(self._queue))
        self._arrived.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._remove(item)  # the caller gave up: free its place in the queue
            raise

    def _remove(self, item: _Pending) -> bool:
        if item.timer:
            item.timer.cancel()
        try:
            self._queue.remove(item)
        except ValueError:
            return False
        self._rows -= item.rows
        self._observer.queue_depth(len(self._queue))
        return True

    def _expire(self, item: _Pending) -> None:
        if self._remove(item) and not item.future.done():
            item.future.set_exception(DeadlineExceeded("deadline passed while the request was queued"))

    async def _work(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        limit = self._config.max_batch_size
        delay = self._config.max_queue_delay_microseconds / 1e6
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            window_end = self._queue[0].enqueued + delay
            while self._queue and self._rows < limit and (remaining := window_end - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch, rows = [], 0
            while self._queue and rows + self._queue[0].rows <= limit:
                item = self._queue[0]
                self._remove(item)
                if not item.future.done():
                    batch.append(item)
                    rows += item.rows
            if batch:
                return batch

    async def _run(self, batch: list[_Pending]) -> None:
        now = asyncio.get_running_loop().time()
        for item in batch:
            self._observer.queue_wait(now - item.enqueued)
        self._observer.batch(sum(item.rows for item in batch))
        try:
            results = await self._execute([item.payload for item in batch])
            if len(results) != len(batch):
                raise BackendError(f"batch of {len(batch)} requests produced {len(results)} results")
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
        except Exception as exc:  # every waiter of the batch learns of the failure
            log.warning("batch of %d requests failed: %s", len(batch), exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Stop taking work, fail what is still queued, and wait for running batches."""
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._queue:
            item = self._queue[0]
            self._remove(item)
            if not item.future.done():
                item.future.set_exception(QueueFull("server is shutting down"))
        await asyncio.gather(*self._running, return_exceptions=True)
