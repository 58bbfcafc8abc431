"""Admission: how many inference requests the gateway holds at once, and when a refused client
should come back.

The limit is checked when an RPC enters the servicer, before its message is parsed: under overload
refusing is what the gateway mostly does, so a refusal must cost a comparison, not a protobuf parse
or a tensor decode (the per-model queue check, DynamicBatcher.has_room, follows the same rule in
the data plane). Without a limit, every request the event loop accepts holds its message and
its decoded tensors until its queue timeout; with one, memory is bounded by the limit times the
largest message.

The retry hint is the time the requests held now take to drain at the recent completion rate,
with jitter (x0.5 to x1.5) so that the clients refused in the same instant do not all come back in
the same instant. It goes to clients as the gRPC retry pushback (trailing metadata
`grpc-retry-pushback-ms`, which gRPC's own retry policy honours) and in the message.

Everything here runs on the event loop thread: plain counters, no lock.
"""

from __future__ import annotations

import random
import time

MIN_RETRY_MS, MAX_RETRY_MS = 10, 5000
"""A hint is never below one scheduling quantum, nor above the default queue timeout (5 s)."""
UNKNOWN_RATE_RETRY_MS = 100
"""The hint before anything has completed (nothing to measure a rate on)."""


class Admission:
    def __init__(self, limit: int, rate_window: float = 1.0):
        if limit < 1:
            raise ValueError(f"the concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self.refused = 0
        """Requests refused since start (for the fault log)."""
        self._window = rate_window
        self._window_start = time.monotonic()
        self._done = 0
        self._rate = 0.0
        """Completions per second, smoothed over windows of `rate_window` seconds."""

    def try_enter(self) -> bool:
        """Take a place if one is free; a caller that got one must `leave()` exactly once."""
        if self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        self._done += 1
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= self._window:
            rate = self._done / elapsed
            self._rate = rate if not self._rate else 0.5 * (self._rate + rate)
            self._window_start, self._done = now, 0

    def retry_after_ms(self) -> int:
        """Milliseconds a refused client should wait before it tries again here."""
        base: float
        if self._rate <= 0:
            base = UNKNOWN_RATE_RETRY_MS
        else:
            base = 1000.0 * max(self.in_flight, 1) / self._rate
        base = min(max(base, MIN_RETRY_MS), MAX_RETRY_MS)
        return max(MIN_RETRY_MS, int(base * random.uniform(0.5, 1.5)))
