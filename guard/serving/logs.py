"""Log lines about requests, safe to write whatever a client sends.

Request ids and model names come from clients. Written raw, a CR/LF in an id starts a forged log
line (a fake `code=OK`, a fake alert), a space forges a field, and a 4 MB id floods the log. So
every client string goes through `loggable`: escaped and cut to a fixed length. Request ids go
through `loggable_id`, stricter still (see there): an id is the one free-form string a client
library fills in on every call, and the place a misconfigured one puts a credential.

Failures that repeat (every request of a broken model, every batch under fail_open) go through a
`FailureLog`: the first one with its traceback, then one line per interval with how many more
happened. A traceback per request says nothing the first one did not, and buries everything else.
"""

from __future__ import annotations

import hashlib
import logging
import re
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


# What a request id looks like in practice: a UUID, a W3C trace id (32 hex digits), a counter, a
# short name such as `cam-3-frame-1207`. Credentials do not fit: they are longer (a guard token
# from secrets.token_urlsafe(32) has 43 characters, API keys 40 and more, JWTs hundreds), or carry
# a scheme and a space (`Bearer sk-...`), or base64's + / =. So an id of this shape is logged as it
# is, and any other as a digest an operator who knows the id can compute (`sha256:` and the first 16
# hex digits of SHA-256 over its UTF-8): searchable, and the log never holds the text itself.
# Escaping alone would still write a smuggled token out (`Bearer\x20sk-...`).
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,32}|[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
MAX_HASHED_CHARS = 4096
"""Ids longer than this are digested over their first MAX_HASHED_CHARS characters and their
length: the cost of a log line stays bounded whatever a client sends (ids may be megabytes)."""


def loggable_id(value: str | None) -> str:
    """A client's request id as a log token: itself when it looks like an id, else `sha256:<16 hex>`;
    "-" when empty."""
    if not value:
        return "-"
    if _PLAIN_ID.fullmatch(value):
        return value
    data = value[:MAX_HASHED_CHARS].encode("utf-8", "surrogatepass")
    if len(value) > MAX_HASHED_CHARS:
        data += f"\0{len(value)}".encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


class FailureLog:
    """One logger line per `interval` seconds for a failure that keeps happening: the first with its
    traceback, later ones with the count since the last line and the latest error. Thread-safe (batches
    fail on worker threads); monotonic clock."""

    def __init__(self, logger: logging.Logger, what: str, interval: float = 10.0, level: int = logging.ERROR):
        self.logger, self.what, self.interval, self.level = logger, what, interval, level
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._unlogged = 0
        self._latest: BaseException | None = None
        """The latest failure not written yet (flush reports it)."""
        self._traced = False

    def __call__(self, exc: BaseException) -> bool:
        """Record one failure; returns whether it was written."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                self._unlogged += 1
                self._latest = exc
                return False
            more, self._unlogged, self._last, self._latest = self._unlogged, 0, now, None
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

    def flush(self) -> None:
        """Write the failures counted since the last line, if any (on stop: the last seconds before a
        stop would otherwise never reach the log, since only a later failure writes them)."""
        with self._lock:
            more, latest, self._unlogged, self._latest = self._unlogged, self._latest, 0, None
        if more and latest is not None:
            self.logger.log(
                self.level,
                "%s: %d more since the last report (latest: %s: %s)",
                self.what,
                more,
                type(latest).__name__,
                loggable(str(latest), 500, token=False),
            )
