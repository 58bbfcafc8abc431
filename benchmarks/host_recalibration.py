"""Clean flag rate through the gateway with thresholds calibrated on another host, served as they
are and recalibrated at load.

    .venv/bin/python -m benchmarks.host_recalibration [--from-commit fa8cd19]

A copy of the shipped digits demo takes its thresholds and learned statistics from `--from-commit`
(the tree whose files were calibrated on the build host, before calibration recorded where it ran)
and is marked as calibrated under a foreign runtime. It is then served twice by `guard serve`,
`--calibration trust` (the stored thresholds: what this host served before) and `--calibration
recalibrate` (derived again here from the shipped references), and every held-out test image is
sent once, one tritonclient request each. Prints the flagged count and rate with its one-sided 95%
upper bound, and the gateway's own log of every threshold it re-derived.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from benchmarks.gateway_process import start_gateway
from benchmarks.repositories import load_split
from guard.detection.bounds import upper_bound

ROOT = Path(__file__).resolve().parents[1]
DEMO = Path("examples/guard_examples/repository/digits")
CALIBRATED_FILES = ("config.toml", "ensemble.npz", "mahalanobis.npz")
FOREIGN = (
    '\n[calibration]\nmode = "recalibrate"\nreferences = "references.npz"\nfingerprint = "build-host"\n'
    "folds = 0\nseed = 0\nconfidence = 0.9\n"
)


def foreign_copy(commit: str, repository: Path) -> None:
    """The shipped demo with `commit`'s calibration files and a fingerprint no host has."""
    model = repository / "digits"
    shutil.copytree(ROOT / DEMO, model)
    for name in CALIBRATED_FILES:
        blob = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:{DEMO / name}"], capture_output=True, check=True
        ).stdout
        (model / name).write_bytes(blob)
    config = (model / "config.toml").read_text()
    config = config.replace('model_file = "model.onnx"\n', "")  # a key that older configs carried
    if "[calibration]" not in config:
        config += FOREIGN
    (model / "config.toml").write_text(config)


def flagged_through(repository: Path, mode: str, x: np.ndarray) -> tuple[int, list[str]]:
    with start_gateway(repository, "--metrics-port", "-1", "--calibration", mode) as running:
        with triton.InferenceServerClient(running.target) as client:
            flagged = 0
            for row in x:
                tensor = triton.InferInput("input", [1, *row.shape], "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(row[None]))
                flagged += (
                    client.infer("digits", [tensor]).get_response().parameters["guard_verdict"].string_param != "clean"
                )
        log = [line.strip() for line in running.log_tail if "guard.serving" in line and "digits:" in line]
    return flagged, log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from-commit", default="fa8cd19", help="the tree whose calibration files were made on another host"
    )
    args = parser.parse_args(argv)
    x = load_split("test")[0]
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work)
        foreign_copy(args.from_commit, repository)
        for mode in ("trust", "recalibrate"):
            flagged, log = flagged_through(repository, mode, x)
            print(
                f"--calibration {mode}: {flagged}/{len(x)} = {flagged / len(x):.4f} flagged "
                f"(95% upper bound {upper_bound(flagged, len(x)):.4f})"
            )
            for line in log:
                print("   ", line)


if __name__ == "__main__":
    main()
