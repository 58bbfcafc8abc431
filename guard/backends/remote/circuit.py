"""A circuit breaker for an upstream: once it stops answering, calls fail in microseconds instead
of each waiting for a connection attempt or a timeout.

closed    -> calls go through; `failures` consecutive connection failures open the circuit.
open      -> calls fail at once; after `reset_s` one probe call is let through (half-open).
half-open -> the probe's success closes the circuit, its failure opens it again.
A health watcher that sees the upstream ready closes the circuit itself (`close`), so recovery
does not wait for the next request. Thread-safe: backend calls run on executor threads.
"""

from __future__ import annotations

import threading
import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failures: int = 3, reset_s: float = 0.25, clock=time.monotonic):
        self.threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; an open circuit lets one probe through per `reset_s`."""
        state = self._state  # the common case without the lock: a closed circuit
        if state == CLOSED:
            return True
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_s:
                self._state = HALF_OPEN
                return True
            return self._state == CLOSED

    def retry_in(self) -> float:
        """Seconds until an open circuit lets its next probe through (0 when not open)."""
        if self._state != OPEN:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def success(self) -> None:
        if self._state == CLOSED and not self._failures:
            return
        with self._lock:
            self._state, self._failures = CLOSED, 0

    close = success

    def failure(self) -> None:
        """A connection failure: counts towards opening; a failed probe reopens at once."""
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.threshold:
                self._state, self._opened_at = OPEN, self._clock()

    def trip(self) -> None:
        """Open now (the health watcher found the upstream unreachable)."""
        with self._lock:
            self._failures = max(self._failures, self.threshold)
            self._state, self._opened_at = OPEN, self._clock()
