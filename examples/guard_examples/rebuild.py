"""Rebuild every shipped model from scratch in a scratch copy, and say what differs from what ships.

    python -m guard_examples.rebuild            # build under build/models-rebuild, report, change nothing shipped
    python -m guard_examples.rebuild --install  # ... then copy the files that differ over the shipped ones

The recipes are seeded, single-threaded and use deterministic torch kernels, so a rebuild is
byte-identical on the same CPU instruction set with the same library versions. Elsewhere the
float kernels round differently (an AVX-512 host trains slightly different weights than an AVX2
one), so the rebuilt files differ; the guard does not depend on that: thresholds are derived
again on the host that serves (guard.detection.calibration). A rebuild therefore never
overwrites the shipped files unless asked to, and always says which files it would change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from guard_examples.paths import PACKAGE, WORKSPACE

RECIPES = (
    ["-m", "guard_examples.digits", "--out", "examples/guard_examples/repository/digits_fp32"],
    ["-m", "guard_examples.quantize"],
    ["-m", "guard_examples.adversarial"],
    ["-m", "guard_examples.pruning"],
    ["-m", "guard_examples.backdoor"],
)
SHIPPED = ("repository", "zoo", "artifacts")  # under the package directory (data/ holds the fixed splits)
COPY = Path("examples") / PACKAGE.name


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(root: Path) -> dict[str, str]:
    found = {}
    for top in SHIPPED:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                found[str(path.relative_to(root))] = digest(path)
    return found


def rebuild(scratch: Path) -> None:
    if scratch.exists():
        shutil.rmtree(scratch)
    # The recipes run on a copy of the package laid out as in the checkout (scratch/examples/
    # guard_examples, run from scratch), so what they write lands in the copy's package data and the
    # paths their cards print read the same as the shipped ones, from the checkout's root.
    shutil.copytree(PACKAGE, scratch / COPY, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(scratch / COPY.parent)}
    for recipe in RECIPES:
        print("rebuild:", " ".join(["python", *recipe]), flush=True)
        subprocess.run([sys.executable, *recipe], cwd=scratch, env=env, check=True)


def compare(scratch: Path) -> dict[str, list[str]]:
    shipped, rebuilt = files(PACKAGE), files(scratch / COPY)
    return {
        "identical": sorted(k for k in shipped if rebuilt.get(k) == shipped[k]),
        "changed": sorted(k for k in shipped if k in rebuilt and rebuilt[k] != shipped[k]),
        "new": sorted(set(rebuilt) - set(shipped)),
        "not rebuilt": sorted(set(shipped) - set(rebuilt)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=WORKSPACE / "build" / "models-rebuild")
    parser.add_argument("--install", action="store_true", help="copy the rebuilt files that differ over the shipped")
    parser.add_argument("--skip-build", action="store_true", help="compare an existing scratch build only")
    args = parser.parse_args(argv)
    if not args.skip_build:
        rebuild(args.scratch)
    result = compare(args.scratch)
    (args.scratch / "rebuild.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"rebuild: {len(result['identical'])} shipped files identical, {len(result['changed'])} differ, "
        f"{len(result['new'])} new, {len(result['not rebuilt'])} not rebuilt (list: {args.scratch / 'rebuild.json'})"
    )
    for name in result["changed"] + result["new"]:
        print(("  would change " if not args.install else "  installing ") + name)
    if args.install:
        for name in result["changed"] + result["new"]:
            (PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(args.scratch / COPY / name, PACKAGE / name)
    elif result["changed"] or result["new"]:
        print(
            "rebuild: nothing shipped was changed; `python -m guard_examples.rebuild --install` would copy these over"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
