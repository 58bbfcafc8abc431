"""The quarantine's writer: the data plane offers each flagged request and returns at once; one
thread drains a bounded buffer into the store, a transaction per batch.

Group commit comes for free: while one batch's COMMIT waits for its fsync, the next requests
collect in the buffer and go in the next batch together. A full buffer (the disk cannot keep up,
or another writer holds the database) drops the request: counted in
`guard_quarantine_dropped_total{reason="buffer_full"}` and logged (one line per interval with the
count since), never waited for: the response path does not block on the disk. A batch that fails to
write is dropped the same way (reason `write_error`), a record larger than the whole cap (reason
`too_large`), and one offered once the writer is closing (reason `closed`: a request still answered
after the stop began). So every request offered is either counted as written or counted as dropped.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable

import numpy as np

from guard.protocol.types import InferRequest, Verdict
from guard.serving.logs import FailureLog
from guard.serving.metrics import GuardMetrics
from guard.serving.quarantine.records import Entry, Flagged, entry_of
from guard.serving.quarantine.settings import QuarantineSettings
from guard.serving.quarantine.store import NotAQuarantine, QuarantineStore

log = logging.getLogger("guard.serving.quarantine")

BUFFER_FULL, WRITE_ERROR, TOO_LARGE, CLOSED = "buffer_full", "write_error", "too_large", "closed"
DROP_LOG_INTERVAL = 10.0


class QuarantineWriter:
    def __init__(self, settings: QuarantineSettings, metrics: GuardMetrics, models: Iterable[str] = ()):
        """Opens (or creates) the store and starts the writer thread. `models`: their
        guard_quarantine_records_total series start at 0, so dashboards see every model at once."""
        self.settings = settings
        self.metrics = metrics
        try:
            self.store = QuarantineStore.open(settings.directory, settings.max_bytes)
        except NotAQuarantine as exc:
            raise NotAQuarantine(f"--quarantine {exc.message}") from None
        for model in models:
            metrics.quarantine_records.labels(model)
        self._buffer: collections.deque[tuple[Flagged, int]] = collections.deque()
        """Offered requests and the bytes each counts against buffer_bytes."""
        self._buffered_bytes = 0
        self._lock = threading.Condition()
        self._closing = False
        self._drops = _DropLog(log, DROP_LOG_INTERVAL)
        self._write_failures = FailureLog(log, "quarantine: a batch failed to write and was dropped")
        log.info(
            "quarantine: %s (%d records, %.1f of %.1f MiB)",
            self.store.path,
            self.store.count(),
            self.store.stored_bytes / 2**20,
            settings.max_bytes / 2**20,
        )
        self._thread = threading.Thread(target=self._run, name="guard-quarantine", daemon=True)
        self._thread.start()

    def offer(
        self, request: InferRequest, verdict: Verdict, *, version: str, identity: str, logits: np.ndarray | None
    ) -> bool:
        """Queue one request whose verdict is not clean; False when the buffer is full (counted,
        logged). Takes references to the request's arrays: nothing is copied or encoded here."""
        flagged = Flagged(
            time.time(), request.model_name, version, request.id, identity, verdict, dict(request.inputs), logits
        )
        size = flagged.input_bytes
        s = self.settings
        with self._lock:
            closing = self._closing
            full = len(self._buffer) >= s.buffer_records or self._buffered_bytes + size > s.buffer_bytes
            if not full and not closing:
                self._buffer.append((flagged, size))
                self._buffered_bytes += size
                self._lock.notify()
                return True
        self._dropped(flagged.model, CLOSED if closing else BUFFER_FULL, 1)
        return False

    def close(self, timeout: float | None = None) -> None:
        """Write what is buffered, then stop the thread and close the store. A request offered from
        here on is dropped (counted)."""
        with self._lock:
            self._closing = True
            self._lock.notify()
            buffered = len(self._buffer)
        log.info("quarantine: closing; writing the %d records still buffered", buffered)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("quarantine: the writer did not finish within %s s; records still buffered are lost", timeout)
            return
        self.store.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._buffer and not self._closing:
                    self._lock.wait()
                if not self._buffer:
                    return  # closing, and everything offered has been written
                taken = [self._buffer.popleft() for _ in range(min(len(self._buffer), self.settings.batch_records))]
                self._buffered_bytes -= sum(size for _, size in taken)
            self._write([flagged for flagged, _ in taken])

    def _write(self, batch: list[Flagged]) -> None:
        entries: list[Entry] = []
        for flagged in batch:
            entry = entry_of(flagged)
            if entry.size > self.settings.max_bytes:
                self._dropped(entry.model, TOO_LARGE, 1)
            else:
                entries.append(entry)
        if not entries:
            return
        try:
            self.store.append(entries)
        except sqlite3.Error as exc:
            self._write_failures(exc)
            for model, count in collections.Counter(e.model for e in entries).items():
                self._dropped(model, WRITE_ERROR, count)
            return
        # Counted only now, with the batch committed: the counter is what is durable (docs/quarantine.md).
        for model, count in collections.Counter(e.model for e in entries).items():
            self.metrics.quarantine_records.labels(model).inc(count)

    def _dropped(self, model: str, reason: str, count: int) -> None:
        self.metrics.quarantine_dropped.labels(model, reason).inc(count)
        self._drops(model, reason, count)


class _DropLog:
    """One warning per interval about dropped records, with how many since the last one: a drop is
    never silent, and a flood of them does not flood the log."""

    def __init__(self, logger: logging.Logger, interval: float):
        self.logger, self.interval = logger, interval
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._since: collections.Counter[tuple[str, str]] = collections.Counter()

    def __call__(self, model: str, reason: str, count: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._since[(model, reason)] += count
            if now - self._last < self.interval:
                return
            since, self._since, self._last = self._since, collections.Counter(), now
        self.logger.warning(
            "quarantine: dropped %s (guard_quarantine_dropped_total)",
            ", ".join(f"{n} of model {m} ({r})" for (m, r), n in sorted(since.items())),
        )
