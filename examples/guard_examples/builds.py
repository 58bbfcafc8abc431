"""How the text model recipes build: into a directory that is complete or absent, stamped with the
recipe's fingerprint (`build.json`), restored from the machine's build cache (build_cache) when
that fingerprint was built before, and their shared command line.

Kept apart from the recipes on purpose: a recipe's fingerprint hashes its own source files, and
this plumbing changes what a build costs, never what it makes, so editing it retrains nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from guard_examples import build_cache
from guard_examples.paths import WORKSPACE

FINGERPRINT = "build.json"
"""Written last into a built directory: what it was built from."""


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def is_current(directory: Path, wanted: dict) -> bool:
    """Whether `directory` holds a model whose build.json is `wanted` (a recipe's fingerprint)."""
    stamp = directory / FINGERPRINT
    if not stamp.is_file() or not (directory / "model.onnx").is_file():
        return False
    try:
        return json.loads(stamp.read_text()) == wanted
    except json.JSONDecodeError:
        return False


def build_atomically(directory: Path, make: Callable[[Path], dict], stamp: dict, cached: bool = True) -> dict:
    """`make(folder)` in a sibling scratch folder that replaces `directory` only when complete (`stamp`
    written last as build.json), so a failed build or a reader meanwhile never sees a partial model.
    With `cached`, a build of the same fingerprint in the machine's build cache is copied instead of
    made, and what is made is stored there. Returns the build's metrics (its metrics.json when
    restored)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = directory.parent / f".{directory.name}.building-{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        if cached and build_cache.restore(directory.name, stamp, scratch):
            metrics_file = scratch / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        else:
            metrics = make(scratch)
            write_json(scratch / FINGERPRINT, stamp)
            build_cache.store(directory.name, stamp, scratch)
        if directory.exists():
            shutil.rmtree(directory)
        scratch.rename(directory)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return metrics


def recipe_main(
    argv: list[str] | None,
    doc: str,
    default_out: Path,
    wanted: Callable[[], dict],
    build: Callable[[Path, bool], dict],
) -> None:
    """A text model recipe's command line: `--out DIR` and `--force`; `build(directory, cached)` runs
    when the directory's build.json is not `wanted()`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out, help="model directory to write")
    parser.add_argument("--force", action="store_true", help="rebuild even when build.json is current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = args.out if args.out.is_absolute() else WORKSPACE / args.out
    if not args.force and is_current(out, wanted()):
        print(f"text-models: {out.name} is current ({out})")
        return
    metrics = build(out, not args.force)  # --force builds again, and the cache takes the new build
    print(f"text-models: built {out.name} in {metrics.get('seconds', 0.0):.1f} s -> {out}")
