"""The benchmark's quick mode as a smoke test: it completes and writes a well-formed report.
Figures are never asserted (they depend on the machine and its load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_writes_a_well_formed_report(tmp_path):
    # --mlserver no: the peer's venv is built on first use (a network install, about a minute);
    # quick mode's default (auto) measures it only where it is already built.
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--mode",
            "quick",
            "--out",
            str(tmp_path),
            "--duration",
            "0.3",
            "--mlserver",
            "no",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    models = {p["model"] for p in results["points"]}
    assert models == {"digits", "mobilenet_v3_small_fp32"}
    for point in results["points"]:
        assert {"configuration", "loop", "requests", "errors", "throughput_rps"} <= set(point)
        if point["configuration"] in ("passthrough", "squeeze", "full_flag", "full_enforce"):
            assert set(point["server"]) >= {"stages", "mean_batch_size", "requests_by_code"}
    configurations = {p["configuration"] for p in results["points"] if p["model"] == "digits"}
    assert configurations == {"echo", "passthrough", "squeeze", "full_flag", "full_enforce"}
    assert {f["kind"] for f in results["floors"]} == {"model", "guard_rows"}
    assert len(results["targets"]) == 5
    for target in results["targets"]:
        assert target["met"] in (True, False, None)
        assert (target["met"] is None) == (target["value"] is None)
    peer_targets = [t for t in results["targets"] if "MLServer" in t["target"]]
    assert all(t["met"] is None for t in peer_targets)  # not measured, and said so

    report = (tmp_path / "results.md").read_text()
    assert report.startswith("# Benchmark (quick mode)")
    assert "## Targets" in report and "## digits" in report and "## mobilenet_v3_small_fp32" in report
    assert "not measured" in report
    for model in models:
        image = matplotlib.image.imread(tmp_path / f"{model}_latency_throughput.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
