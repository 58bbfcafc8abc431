"""Bearer tokens and the names they stand for (`guard serve --auth-tokens FILE`, or the same text in
the environment variable GUARD_AUTH_TOKENS; the file wins when both are set).

One `name:token` per line; blank lines and lines starting with `#` are skipped. A token is refused
at start-up when it is shorter than MIN_TOKEN_CHARS, holds whitespace, or appears twice (a token
must say who its holder is); errors name the source and the line number, never the line, which may
hold a real token.

A token file is read again when it changes (its mtime, size or inode; looked at most once per
CHECK_SECONDS): a token added, revoked or rotated takes effect without a restart, as the TLS files
do. A changed file that cannot be used (half-written, a bad line) keeps the tokens in use, with one
warning per state of the file; a revoked holder's next call is refused once the file parses.

Only SHA-256 digests of the tokens are kept. `match` compares the presented token's digest with
every configured digest using hmac.compare_digest and never stops early, so the time it takes does
not depend on which token matched, where the presented one first differs, or its length.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guard.protocol.errors import SettingsError

log = logging.getLogger("guard.serving.tokens")

ENVIRONMENT = "GUARD_AUTH_TOKENS"
CHECK_SECONDS = 1.0
"""How often a token file's stat is looked at: a revoked token stops working within this."""
MIN_TOKEN_CHARS = 16
"""A guessable token is no authentication: 16 characters of secrets.token_urlsafe are 96 bits."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
"""Names appear in logs, metrics and grants: one token of a `key=value` log line, no separators."""


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[tuple[str, bytes], ...]
    """(name, SHA-256 digest of the token) per configured token."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    def match(self, presented: str) -> str | None:
        """The name of the token presented, or None; constant time over the whole table."""
        digest = _digest(presented)
        found = None
        for name, expected in self.entries:
            if hmac.compare_digest(digest, expected):
                found = name  # no break: every entry costs the same, matched or not
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_tokens(text: str, source: str) -> TokenTable:
    """The table in `text`; `source` names it in errors (a flag and a path, or the variable)."""
    entries: list[tuple[str, bytes]] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, token = (part.strip() for part in line.partition(":"))
        where = f"{source}: line {number}"
        if not colon or not name or not token:
            raise SettingsError(f"{where}: expected name:token")
        if not NAME.fullmatch(name):
            raise SettingsError(
                f"{where}: a name is 1-128 letters, digits and . _ @ + - (starting with a letter or digit)"
            )
        if name in names:
            raise SettingsError(f"{where}: the name {name!r} is given twice")
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise SettingsError(
                f"{where}: a token is at least {MIN_TOKEN_CHARS} characters without spaces "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
            )
        digest = _digest(token)
        if any(hmac.compare_digest(digest, known) for _, known in entries):
            raise SettingsError(f"{where}: the token of {name!r} is also another name's: each holder needs its own")
        names.add(name)
        entries.append((name, digest))
    if not entries:
        raise SettingsError(f"{source}: no name:token line: every call would be refused")
    return TokenTable(tuple(entries))


class TokenFile:
    """The tokens of a file, read again when it changes (see the module's docstring)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path, self.source, self.clock = path, f"--auth-tokens {path}", clock
        self._signature = self._stat()
        self.table = parse_tokens(self._text(), self.source)  # at start-up a bad file is an error
        self._checked = clock()
        self._failed: tuple[int, int, int] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self._current().names

    def match(self, presented: str) -> str | None:
        return self._current().match(presented)

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SettingsError(f"{self.source}: cannot read: {_reason(exc)}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{self.source}: cannot read: {_reason(exc)}") from None

    def _current(self) -> TokenTable:
        now = self.clock()
        if now - self._checked < CHECK_SECONDS:
            return self.table
        self._checked = now
        try:
            signature = self._stat()
            if signature == self._signature:
                return self.table
            table = parse_tokens(self._text(), self.source)
            if self._stat() != signature:  # changed while being read: the next look reads again
                return self.table
        except SettingsError as exc:
            state = self._failed_state()
            if state != self._failed:  # once per state of the file, not once per call
                self._failed = state
                log.warning("the tokens file changed but cannot be used, keeping the tokens in use: %s", exc)
            return self.table
        self.table, self._signature, self._failed = table, signature, None
        log.info("%s: read again, %d tokens", self.source, len(table.entries))
        return table

    def _failed_state(self) -> tuple[int, int, int] | None:
        try:
            return self._stat()
        except SettingsError:
            return None


def load_tokens(path: Path | None, inline: str | None) -> TokenTable | TokenFile | None:
    """The tokens from `path` (--auth-tokens, read again when it changes), else from `inline`
    (GUARD_AUTH_TOKENS); None: no token authentication."""
    if path is not None:
        return TokenFile(path)
    if inline is not None:
        return parse_tokens(inline, ENVIRONMENT)
    return None


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
