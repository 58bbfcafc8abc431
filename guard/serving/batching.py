"""Per-model dynamic batcher: a bounded queue, a time window, and one result future per request.

Requests join a queue that rejects at once when full. When a batch slot is free (at most
`instances` batches run at the same time), the queued requests are gathered until the batch is
full or the first request has waited `max_queue_delay_microseconds`, and handed to `execute` as
one batch. A request whose deadline passes while it is queued fails with DEADLINE_EXCEEDED and
never runs. An error raised by `execute` reaches every request of that batch. Times are the event
loop's monotonic clock: the batcher runs on the loop that calls it (it keeps no loop of its own,
so it may be built on any thread).

Closing drains: a closed batcher takes no new request, but runs what is already queued (without
waiting for a batching window nobody can join any more) until the queue is empty or the close's
timeout passes. Only what is still waiting then fails, with UNAVAILABLE: a request a client
already handed over is answered, not dropped, whenever there is time to run it (server shutdown,
and the old copy of a model that a reload replaced).

Scheduling is callback-driven rather than a worker task: every wake-up of a task costs an event
loop iteration, and a gateway in front of a sub-millisecond model spends most of its time on
those. `execute` is synchronous. It runs on a worker thread, or, for a single-instance model whose
batches take less than `inline_below_microseconds` on average, on the event loop thread itself:
two thread hops cost more than such a batch, and the loop was going to wait for it anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Protocol

from guard.protocol.errors import BackendError, DeadlineExceeded, InvalidInput, QueueFull
from guard.serving.model_config import BatchingConfig
from guard.serving.queueing import WaitingQueue

log = logging.getLogger("guard.serving.batching")

Execute = Callable[[list[Any], float | None], list[Any]]
"""Runs one batch of payloads, given the latest deadline among them; returns one result each."""


class BatchObserver(Protocol):
    def queue_depth(self, requests: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def batch(self, rows: int) -> None: ...


class _NullObserver:
    def queue_depth(self, requests: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def batch(self, rows: int) -> None: ...


@dataclass(eq=False, slots=True)
class _Pending:
    payload: Any
    rows: int
    future: asyncio.Future[Any]
    enqueued: float
    deadline: float | None
    flow: str | None = None
    timer: asyncio.TimerHandle | None = None
    deadline_what: str = "deadline"
    """What passes at `deadline`, for the DEADLINE_EXCEEDED message (guard.serving.deadlines)."""


class DynamicBatcher:
    # Weight of the newest batch in the running mean of execution times (inline or thread).
    SMOOTHING = 0.1

    def __init__(
        self,
        execute: Execute,
        config: BatchingConfig,
        observer: BatchObserver | None = None,
        executor: Executor | None = None,
        flow_limit: int = 0,
    ):
        """flow_limit: most requests one flow (a camera) may have queued (0 = no limit of its own)."""
        self._execute = execute
        self._config = config
        self._observer = observer or _NullObserver()
        self._executor = executor
        self._queue: WaitingQueue[_Pending] = WaitingQueue(flow_limit)
        self._running = 0
        self._dispatch_scheduled = False
        self._window: asyncio.TimerHandle | None = None
        self._window_end = 0.0
        self._idle = asyncio.Event()
        """Set while no batch runs."""
        self._idle.set()
        self._batches: list[list[_Pending]] = []  # running, so that abort() can answer their requests
        self._closed = False
        self._inline_below = config.inline_below_microseconds / 1e6
        self.mean_execute_seconds: float | None = None
        self._last_failure_log = -1e9
        self._failures_unlogged = 0

    @property
    def inline(self) -> bool:
        """Whether the next batch runs on the event loop thread."""
        if self._executor is None:
            return True
        if self._config.instances > 1 or self.mean_execute_seconds is None:
            return False  # measure on a worker first: a slow first batch must not block the loop
        return self.mean_execute_seconds < self._inline_below

    def has_room(self, flow: str | None = None) -> bool:
        """Whether one more request (of `flow`) would be queued rather than rejected as a full queue:
        callers may decide this before doing any per-request work."""
        return not self._closed and self._full(flow) is None

    def full_reason(self, flow: str | None = None) -> str:
        """Why has_room(flow) is false."""
        return "server is shutting down" if self._closed else (self._full(flow) or "queue full")

    def _full(self, flow: str | None) -> str | None:
        return self._queue.full(self._config.max_queue_size, flow)

    async def submit(
        self,
        payload: Any,
        rows: int,
        deadline: float | None = None,
        flow: str | None = None,
        deadline_what: str = "deadline",
    ) -> Any:
        """Queue one request of `rows` rows and wait for its result (deadline: loop.time() based;
        `deadline_what` names it in the DEADLINE_EXCEEDED message: the client's, or the server's own).
        `flow` (a camera): batches take requests from every flow in turn, and one flow may hold at
        most flow_limit places in the queue, so a flooding camera delays only itself."""
        if rows > self._config.max_batch_size:  # could never be scheduled
            raise InvalidInput(f"batch of {rows} rows exceeds max_batch_size {self._config.max_batch_size}")
        if self._closed:
            raise QueueFull("server is shutting down")
        full = self._full(flow)
        if full is not None:
            raise QueueFull(full)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"{deadline_what} passed before the request was queued")
        item = _Pending(payload, rows, loop.create_future(), now, deadline, flow, deadline_what=deadline_what)
        if deadline is not None:
            item.timer = loop.call_at(deadline, self._expire, item)
        self._queue.add(item)
        self._observer.queue_depth(len(self._queue))
        self._schedule()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._remove(item)  # the caller gave up: free its place in the queue
            raise

    def _schedule(self) -> None:
        # One dispatch after the callbacks already ready have run, so requests that arrive in the
        # same loop iteration share a batch even with no batching window.
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _remove(self, item: _Pending) -> bool:
        if item.timer:
            item.timer.cancel()
        if not self._queue.remove(item):
            return False
        self._observer.queue_depth(len(self._queue))
        return True

    def _expire(self, item: _Pending) -> None:
        if self._remove(item) and not item.future.done():
            item.future.set_exception(DeadlineExceeded(f"{item.deadline_what} passed while the request was queued"))

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        limit = self._config.max_batch_size
        delay = self._config.max_queue_delay_microseconds / 1e6
        loop = asyncio.get_running_loop()
        while self._queue and self._running < self._config.instances:
            window_end = self._queue.head.enqueued + delay
            # Once closed, nothing can join the batch: waiting for the window would only delay it.
            if self._queue.rows < limit and not self._closed and loop.time() < window_end:
                self._wait_for_window(loop, window_end)
                return
            batch = self._take(loop, limit)
            if batch:
                self._start(loop, batch)

    def _wait_for_window(self, loop: asyncio.AbstractEventLoop, end: float) -> None:
        if self._window is not None:
            if self._window_end == end:
                return
            self._window.cancel()
        self._window_end = end
        self._window = loop.call_at(end, self._window_closed)

    def _window_closed(self) -> None:
        self._window = None
        self._dispatch()

    def _take(self, loop: asyncio.AbstractEventLoop, limit: int) -> list[_Pending]:
        batch = self._queue.take(limit, self._leaves_queue, loop.time())
        self._observer.queue_depth(len(self._queue))
        return batch

    @staticmethod
    def _leaves_queue(item: _Pending) -> bool:
        """Whether a request taken out of the queue still runs (its caller may have given up)."""
        if item.timer:
            item.timer.cancel()
        return not item.future.done()

    def _start(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        now = loop.time()
        for item in batch:
            self._observer.queue_wait(now - item.enqueued)
        self._observer.batch(sum(item.rows for item in batch))
        payloads = [item.payload for item in batch]
        # The batch is worth running while any of its requests still waits: its latest deadline,
        # none if one request has none.
        deadlines = [i.deadline for i in batch if i.deadline is not None]
        deadline = max(deadlines) if len(deadlines) == len(batch) else None
        self._running += 1
        self._batches.append(batch)
        self._idle.clear()
        executor = self._executor
        if executor is None or self.inline:
            try:
                results = self._timed(payloads, deadline)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiter below
                self._finish(batch, exc)
            else:
                self._finish(batch, results)
            return
        future = executor.submit(self._timed, payloads, deadline)
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._finished, batch, done))

    def _timed(self, payloads: list[Any], deadline: float | None) -> list[Any]:
        start = time.perf_counter()
        results = self._execute(payloads, deadline)
        seconds = time.perf_counter() - start
        mean = self.mean_execute_seconds
        self.mean_execute_seconds = seconds if mean is None else mean + self.SMOOTHING * (seconds - mean)
        return results

    def _finished(self, batch: list[_Pending], done: Future[list[Any]]) -> None:
        exc = done.exception()
        self._finish(batch, done.result() if exc is None else exc)

    def _finish(self, batch: list[_Pending], outcome: list[Any] | BaseException) -> None:
        """outcome: the batch's results (one per request), or what running it raised."""
        self._running -= 1
        self._batches.remove(batch)
        if not isinstance(outcome, BaseException) and len(outcome) != len(batch):
            outcome = BackendError(f"batch of {len(batch)} requests produced {len(outcome)} results")
        if isinstance(outcome, BaseException):  # every waiter of the batch learns of the failure
            self._log_failure(len(batch), outcome)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(outcome)
        else:
            for item, result in zip(batch, outcome):
                if not item.future.done():
                    item.future.set_result(result)
        if self._running == 0:
            self._idle.set()
        if self._queue:
            self._schedule()

    def _log_failure(self, size: int, exc: BaseException) -> None:
        # At most one line a second: a dead upstream fails every batch, and each waiter already
        # gets its own status; the log only needs to say that it is happening, and how often.
        now = time.monotonic()
        if now - self._last_failure_log >= 1.0:
            more = (
                f" ({self._failures_unlogged} more failed batches since the last report)"
                if self._failures_unlogged
                else ""
            )
            log.warning("batch of %d requests failed: %s%s", size, exc, more)
            self._last_failure_log, self._failures_unlogged = now, 0
        else:
            self._failures_unlogged += 1

    def _flush_failures(self) -> None:
        """Report the failed batches counted since the last line (closing: no later failure will)."""
        if self._failures_unlogged:
            log.warning("%d more failed batches since the last report", self._failures_unlogged)
            self._failures_unlogged = 0

    async def close(self, timeout: float | None = None) -> bool:
        """Stop taking work and drain: what is queued still runs, batch by batch, until nothing is
        queued or running, or `timeout` seconds pass (None: no limit). Then whatever still waits
        fails (see abort). Returns whether nothing was left running (False: a batch's thread
        still runs, and its executor must not be joined)."""
        self._closed = True
        if self._window is not None:  # the queue's head need not wait for its window any more
            self._window.cancel()
            self._window = None
        if self._queue:
            self._schedule()
        if self._queue or self._running:
            try:
                await asyncio.wait_for(self._drained(), timeout)
            except TimeoutError:
                self.abort("server is shutting down: the request was still waiting when the drain ended")
        self._flush_failures()
        return self._running == 0

    async def _drained(self) -> None:
        while self._queue or self._running:
            await self._idle.wait()
            if self._queue:  # a dispatch is scheduled; let it start the next batch
                await asyncio.sleep(0)

    def abort(self, reason: str = "server is shutting down") -> int:
        """Fail every request that still waits, queued or in a running batch, with UNAVAILABLE, now
        (the exit timeout passed, or a second signal). A running batch's thread cannot be stopped;
        its results are discarded when it ends. Returns how many requests were failed."""
        self._closed = True
        failed = 0
        for item in self._queue.clear():
            if item.timer:
                item.timer.cancel()
            if not item.future.done():
                item.future.set_exception(QueueFull(reason))
                failed += 1
        self._observer.queue_depth(0)
        for batch in self._batches:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(QueueFull(reason))
                    failed += 1
        return failed
