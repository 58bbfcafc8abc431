"""`guard scan-model`, `scan-data`, `audit`: offline checks before a model is served (docs/scans.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(commands) -> None:
    helps = {
        "scan-model": "reverse-engineer backdoor triggers (Neural Cleanse); writes scan.json for the load gate",
        "scan-data": "rank a labelled training set by how likely each sample is poisoned",
        "audit": "accuracy under input noise, corruptions, PGD and weight noise",
    }
    data_help = {
        "scan-model": ".npz of clean samples x the triggers are fitted on (labels y optional)",
        "scan-data": ".npz of the labelled training set (x, y), in the order --poison-indices refers to",
        "audit": ".npz of labelled test samples (x, y)",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--model", type=Path, required=True, help="a model directory or an .onnx file")
        sub.add_argument("--data", type=Path, required=True, help=data_help[name])
        sub.add_argument("--out", type=Path, help="report directory (default reports/scans/<model>)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--no-progress", action="store_true")
        if name == "scan-model":
            sub.add_argument("--steps", type=int, help="optimisation steps (default 400)")
            sub.add_argument("--batch-size", type=int, help="clean samples per class per step (default 64)")
        if name == "scan-data":
            sub.add_argument("--poison-indices", type=Path, help="JSON list or poison.json of known poisoned indices")
            sub.add_argument(
                "--reference",
                type=Path,
                help="trusted clean labelled .npz held out from training "
                "(without it: the papers' versions, docs/scans.md)",
            )
            sub.add_argument(
                "--poison-rate",
                type=float,
                default=0.1,
                help="assumed poison rate when the poisoned indices are unknown (sets the budget)",
            )
        sub.set_defaults(func=run, scan=name)


def run(args: argparse.Namespace) -> int:
    from guard.tools.scans.commands import run as run_scan  # lazy: torch, matplotlib

    return run_scan(args)
