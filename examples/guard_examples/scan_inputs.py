"""The digits data the offline scans read, written as the .npz files `guard scan-*` take.

    python -m guard_examples.scan_inputs --out reports/scans/inputs

The scans are part of the installed guard and take their samples only from files (`--data`,
`--reference`), so this recipe writes the demo's: the fixed splits (calibration.npz for
`scan-model` and as `scan-data`'s trusted reference, test.npz for `audit`, train.npz for a clean
model's `scan-data`) and, per backdoored zoo model, its train split exactly as it was trained
(`train_backdoor_<trigger>.npz`: poisoned in place with the zoo's trigger.npz at the indices of its
poison.json, which `--poison-indices` then reads as the known poison).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from guard_examples.backdoor import poisoned_train_set
from guard_examples.digits_data import save_split
from guard_examples.evaluation_plan import backdoored_models
from guard_examples.paths import ZOO
from guard_examples.triggers import load_trigger

log = logging.getLogger("guard_examples.scan_inputs")

SPLITS = ("train", "calibration", "test")


def poisoned_train_npz(model_dir: Path, path: Path) -> Path:
    """The train split as `model_dir`'s backdoored model saw it (guard_examples.backdoor.poisoned_train_set)."""
    poison = json.loads((model_dir / "poison.json").read_text())
    x, y = poisoned_train_set(
        load_trigger(model_dir / "trigger.npz"),
        np.asarray(poison["train_indices"], dtype=np.int64),
        int(poison["target"]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, x=x, y=y)
    return path


def write_scan_inputs(out: Path, zoo: Path = ZOO) -> dict[str, Path]:
    """Every file under `out`; returns them by name (split names, then backdoored model names)."""
    out = Path(out)
    written = {split: save_split(split, out / f"{split}.npz") for split in SPLITS}
    for directory in backdoored_models(zoo):
        written[directory.name] = poisoned_train_npz(directory, out / f"train_{directory.name}.npz")
    log.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the .npz files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for path in write_scan_inputs(args.out).values():
        print(path)


if __name__ == "__main__":
    main()
