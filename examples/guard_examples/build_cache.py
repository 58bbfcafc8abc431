"""A machine-wide cache of built model directories, keyed by their build fingerprint.

A text model takes minutes to train, and each fresh checkout (a CI clone, a second worktree) would
otherwise train it again from the same recipe, packages and data. A built directory is stored here
under a digest of its fingerprint (the `build.json` every recipe writes: the recipe's source, the
package versions, the data's digest), and a build whose fingerprint matches copies it instead of
training: a change to any of those makes a new key and a fresh build, so the cache can only skip
work that would reproduce what it holds.

    GUARD_BUILD_CACHE=/some/folder   where the cache lives (default ~/.cache/guard-examples/builds,
                                     or $XDG_CACHE_HOME/guard-examples/builds)
    GUARD_BUILD_CACHE=off            no cache: every missing model is built

The newest KEEP entries of each model name are kept; older ones are removed when a new one is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger("guard_examples.build_cache")

ENV = "GUARD_BUILD_CACHE"
KEEP = 2
DIGITS = 16
"""Hex digits of the fingerprint's digest in an entry's name."""
COMPLETE = ".complete"
"""Written last into an entry: an entry without it was cut short and is never read."""


def root() -> Path | None:
    """The cache's folder, or None when switched off."""
    configured = os.environ.get(ENV, "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "guard-examples" / "builds"


def key(name: str, stamp: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:DIGITS]
    return f"{name}-{digest}"


def _entries(folder: Path, name: str) -> list[Path]:
    """The cache's entries of `name` (not of another model whose name merely starts the same)."""
    pattern = re.compile(re.escape(name) + rf"-[0-9a-f]{{{DIGITS}}}")
    return [p for p in folder.iterdir() if pattern.fullmatch(p.name)]


def restore(name: str, stamp: dict[str, Any], target: Path) -> bool:
    """Copy the cached build of `name` with this fingerprint into `target` (which must not exist);
    False when there is none, or when it went away or could not be read while being copied (another
    checkout replacing or pruning it): the caller then builds."""
    folder = root()
    if folder is None:
        return False
    entry = folder / key(name, stamp)
    if not (entry / COMPLETE).is_file():
        return False
    try:
        shutil.copytree(entry, target)
        # no marker in the copy (FileNotFoundError): the entry was being removed while it was copied
        (target / COMPLETE).unlink()
    except OSError as exc:
        log.warning("%s: the build cache's %s could not be read (%s): building", name, entry, exc)
        shutil.rmtree(target, ignore_errors=True)
        return False
    with contextlib.suppress(OSError):  # a cache this user may read but not write only ages
        os.utime(entry)  # most recently used: pruning keeps it
    log.info("%s: restored from the build cache (%s)", name, entry)
    return True


def store(name: str, stamp: dict[str, Any], built: Path) -> None:
    """Copy a complete build into the cache, then drop the oldest entries of `name` beyond KEEP (never
    the one just stored). A cache that cannot be written costs only the next build's time, so
    failures are logged, not raised."""
    folder = root()
    if folder is None:
        return
    entry = folder / key(name, stamp)
    scratch = folder / f".{entry.name}.storing-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if scratch.exists():
            shutil.rmtree(scratch)
        shutil.copytree(built, scratch)
        (scratch / COMPLETE).write_text("")
        if entry.exists():
            shutil.rmtree(entry)
        scratch.rename(entry)
        others = sorted(
            (p for p in _entries(folder, name) if p != entry),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
            reverse=True,
        )
        for old in others[KEEP - 1 :]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        log.warning("%s: not stored in the build cache %s (%s)", name, folder, exc)
        shutil.rmtree(scratch, ignore_errors=True)
