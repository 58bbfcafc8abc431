"""Log lines about requests, safe to write whatever a client sends.

Request ids and model names come from clients. Written raw, a CR/LF in an id starts a forged log
line (a fake `code=OK`, a fake alert), a space forges a field, and a 4 MB id floods the log. So
every client string goes through `loggable`: escaped and cut to a fixed length.

Failures that repeat (every request of a broken model, every batch under fail_open) go through a
`FailureLog`: the first one with its traceback, then one line per interval with how many more
happened. A traceback per request says nothing the first one did not, and buries everything else.
"""

from __future__ import annotations

import logging
import threading
import time

MAX_LOGGED_CHARS = 128
"""Longest client string written to a log line (after escaping); ids are UUIDs or counters."""

# Printable characters that still break a `key=value key=value` line: a space starts a new field,
# a quote starts a quoted one in most log parsers, and a backslash would make escapes ambiguous.
_SPECIAL = frozenset(' "\\')
_BACKSLASH = frozenset("\\")


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def loggable(value: str | None, limit: int = MAX_LOGGED_CHARS, token: bool = True) -> str:
    """`value` as one log token: non-printable characters (CR, LF, other controls, Unicode line
    separators) and backslashes escaped as \\xNN/\\uNNNN, and with `token` spaces and quotes too;
    at most `limit` characters and then how many were cut; "-" when empty. Costs O(limit), whatever
    the length."""
    if not value:
        return "-"
    special = _SPECIAL if token else _BACKSLASH
    out: list[str] = []
    size = 0
    for i, char in enumerate(value):
        piece = char if char.isprintable() and char not in special else _escape(char)
        if size + len(piece) > limit:
            return "".join(out) + f"...[{len(value) - i} more chars]"
        out.append(piece)
        size += len(piece)
    return "".join(out)


class FailureLog:
    """One logger line per `interval` seconds for a failure that keeps happening: the first with its
    traceback, later ones with the count since the last line and the latest error. Thread-safe (batches
    fail on worker threads); monotonic clock."""

    def __init__(self, logger: logging.Logger, what: str, interval: float = 10.0, level: int = logging.ERROR):
        self.logger, self.what, self.interval, self.level = logger, what, interval, level
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._unlogged = 0
        self._traced = False

    def __call__(self, exc: BaseException) -> bool:
        """Record one failure; returns whether it was written."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                self._unlogged += 1
                return False
            more, self._unlogged, self._last = self._unlogged, 0, now
            first, self._traced = not self._traced, True
        suffix = f" ({more} more since the last report)" if more else ""
        self.logger.log(
            self.level,
            "%s: %s: %s%s",
            self.what,
            type(exc).__name__,
            loggable(str(exc), 500, token=False),
            suffix,
            exc_info=exc if first else None,
        )
        return True
