"""What failed at the transport, logged once per interval with counts instead of once per request.

A hostile or broken client sends thousands of bad requests a second; a log line (let alone a
traceback) for each would cost more than refusing them and bury everything else. So failures are
counted by RPC and status, and one line per `interval` says how many there were. An unexpected
exception (a bug) is the exception: the first of each type is logged at once with its traceback,
since that is what a developer needs; later ones are only counted. Client strings never reach these
lines unescaped (limits.echo).

Runs on the event loop thread; the summary of the last burst is written by a timer, so a burst
that stops is still reported.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from guard.protocol.limits import echo


class FaultLog:
    def __init__(self, logger: logging.Logger, interval: float = 10.0):
        self.logger, self.interval = logger, interval
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        """(rpc, status) -> failures since the last summary."""
        self.totals: collections.Counter[str] = collections.Counter()
        """status -> failures since start."""
        self._latest: dict[str, str] = {}
        self._traced: set[tuple[str, type]] = set()
        self._flush: asyncio.TimerHandle | None = None

    def failed(self, rpc: str, status: str, message: str) -> None:
        """A request answered with an error status (bad input, overload, an unknown model...): counted."""
        self._count(rpc, status, message)

    def server_fault(self, rpc: str, exc: BaseException) -> None:
        """An unexpected exception: the first of its type per RPC logged now with its traceback."""
        key = (rpc, type(exc))
        if key not in self._traced:
            self._traced.add(key)
            self.logger.error(
                "unexpected error in %s (logged once per type; later ones are counted): %s: %s",
                rpc,
                type(exc).__name__,
                echo(str(exc), 500),
                exc_info=exc,
            )
        self._count(rpc, "INTERNAL", f"{type(exc).__name__}: {str(exc)}")

    def _count(self, rpc: str, status: str, message: str) -> None:
        self.counts[rpc, status] += 1
        self.totals[status] += 1
        self._latest[status] = message
        if self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a direct call in a test): report at once
                self.flush()
                return
            self._flush = loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Write one line with the counts since the last one (nothing if there were none)."""
        self._flush = None
        if not self.counts:
            return
        by_status: collections.Counter[str] = collections.Counter()
        for (_, status), count in self.counts.items():
            by_status[status] += count
        parts = []
        for status, count in by_status.most_common():
            rpcs = ", ".join(f"{rpc} {n}" for (rpc, s), n in sorted(self.counts.items()) if s == status)
            parts.append(f"{count} {status} ({rpcs}; latest: {echo(self._latest[status], 300)})")
        level = logging.WARNING if "INTERNAL" in by_status else logging.INFO
        self.logger.log(level, "requests failed in the last %.0f s: %s", self.interval, "; ".join(parts))
        self.counts.clear()
        self._latest.clear()

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self.flush()
