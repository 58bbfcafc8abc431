"""The demo's evaluation plan: what `guard evaluate` measures on the digits models.

    python -m guard_examples.evaluation_plan --out reports/eval-plan
    guard evaluate --plan reports/eval-plan/plan.toml [--quick]

`guard evaluate` is installed as a wheel and knows nothing of this checkout, so this recipe
writes everything it needs into one self-contained directory (paths in plan.toml are relative
to it): the fixed digits splits as .npz (train -> fit, calibration, test), the FP32 surrogate
(`examples/guard_examples/repository/digits_fp32/model.onnx`), the shipped INT8 `digits` model with its detector
network's weights, and each backdoored zoo model with its trigger converted to guard's mask +
pattern format (guard_examples.triggers.write_guard_trigger, exact) and its poison target.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import tomlkit

from guard_examples.digits_data import save_split
from guard_examples.paths import REPOSITORY, WORKSPACE, ZOO
from guard_examples.triggers import load_trigger, write_guard_trigger

log = logging.getLogger("guard_examples.evaluation_plan")

ROOT = WORKSPACE
NETWORK_WEIGHTS = "detector_net.npz"
SPLITS = {"fit": "train", "calibration": "calibration", "test": "test"}
NOTES = [
    "Demo: the surrogate is the FP32 DigitsNet (examples/guard_examples/repository/digits_fp32, exported from "
    "examples/guard_examples/artifacts/digits_fp32.pt); the gateway serves its INT8 quantization (`digits`), so every "
    "adversarial row is a surrogate-to-INT8 transfer.",
    "The detector network is trained on PGD only: FGSM, MI-FGSM, BIM, CW, DeepFool and Square measure how it "
    "generalises.",
]


def copy_into(source: Path, out: Path, relative: str) -> str:
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return relative


def backdoored_models(zoo: Path = ZOO) -> list[Path]:
    """The zoo's backdoored model directories (model.onnx, trigger.npz and poison.json each)."""
    return [
        d
        for d in sorted(zoo.glob("backdoor_*"))
        if all((d / f).is_file() for f in ("model.onnx", "trigger.npz", "poison.json"))
    ]


def write_digits_plan(out: Path, notes: list[str], models: list[dict], written_by: str, repository: Path) -> Path:
    """plan.toml in `out` for `models` (their files already under `out`): the fixed digits splits
    and the FP32 surrogate copied beside it, every path relative to the plan."""
    data = {
        key: save_split(split, out / "data" / f"{key}.npz").relative_to(out).as_posix() for key, split in SPLITS.items()
    }
    plan = {
        "notes": notes,
        "data": data,
        "surrogate": {"onnx": copy_into(repository / "digits_fp32" / "model.onnx", out, "surrogate.onnx")},
        "models": models,
    }
    path = out / "plan.toml"
    path.write_text(
        f"# Written by `python -m {written_by}`; paths are relative to this file.\n" + tomlkit.dumps(plan),
        encoding="utf-8",
    )
    return path


def write_plan(out: Path, repository: Path = REPOSITORY, zoo: Path = ZOO) -> Path:
    """Write the digits evaluation plan and every file it names under `out`; returns plan.toml."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digits = {
        "name": "digits",
        "onnx": copy_into(repository / "digits" / "model.onnx", out, "models/digits/model.onnx"),
    }
    if (repository / "digits" / NETWORK_WEIGHTS).is_file():
        digits["detector_network"] = copy_into(
            repository / "digits" / NETWORK_WEIGHTS, out, f"models/digits/{NETWORK_WEIGHTS}"
        )
    models = [digits]
    for directory in backdoored_models(zoo):
        name = directory.name
        trigger = write_guard_trigger(load_trigger(directory / "trigger.npz"), out / "triggers" / f"{name}.npz")
        models.append(
            {
                "name": name,
                "onnx": copy_into(directory / "model.onnx", out, f"models/{name}/model.onnx"),
                "trigger": trigger.relative_to(out).as_posix(),
                "target": int(json.loads((directory / "poison.json").read_text())["target"]),
            }
        )
    path = write_digits_plan(out, NOTES, models, "guard_examples.evaluation_plan", repository)
    log.info("wrote %s (%d models)", path, len(models))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for plan.toml and the files it names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    path = write_plan(args.out)
    from guard.api import load_plan  # what guard evaluate will check, checked now

    load_plan(path)
    print(path)


if __name__ == "__main__":
    main()
