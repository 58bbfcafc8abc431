"""The one rule for every file a model's config.toml names: it stays inside the model directory.

A config that may name any path lets whoever writes a model directory (a model vendor, a CI job
that syncs a bucket) make the gateway read, and `guard calibrate` write, files elsewhere on the
host: `statistics = "../../other/mahalanobis.npz"`, an absolute `model_file`, a symlink planted in
the directory. So a name must be relative and must still lie under the model directory once every
symlink on the way is followed (`Path.resolve()`), the directory's own path resolved the same way
(a repository that is itself a symlink still works).
"""

from __future__ import annotations

from pathlib import Path


class OutsideDirectory(ValueError):
    """A configured name that leaves its directory; the message says how, for the config error."""


def inside_directory(directory: Path, name: str) -> Path:
    """`directory / name`, when `name` is relative and resolves (symlinks followed) to a path
    strictly under `directory`; raises OutsideDirectory otherwise. The file need not exist yet
    (`guard calibrate` writes some of them)."""
    if Path(name).is_absolute():
        raise OutsideDirectory(f"{name!r} is an absolute path (name files relative to the model directory)")
    path = directory / name
    root, resolved = directory.resolve(), path.resolve()
    if root not in resolved.parents:
        raise OutsideDirectory(f"{name!r} resolves outside the model directory (to {resolved})")
    return path
