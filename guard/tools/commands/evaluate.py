"""`guard evaluate`: attack the guarded models through a live gateway (docs/evaluation.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from guard.tools import credentials


def add(commands) -> None:
    ev = commands.add_parser(
        "evaluate",
        help="attack the guarded models through a live gateway and report detection rates (docs/evaluation.md)",
    )
    ev.add_argument(
        "--plan",
        type=Path,
        required=True,
        help="evaluation plan (TOML): the clean data splits, the "
        "surrogate, the models under test and their triggers (docs/evaluation.md)",
    )
    ev.add_argument("--samples", type=int, help="test rows to attack (default all; 40 with --quick)")
    ev.add_argument("--quick", action="store_true", help="few iterations per attack (smoke test, not results)")
    ev.add_argument(
        "--report-dir",
        type=Path,
        default=Path("reports/latest"),
        help="where results.json, results.md and roc_*.png go (default reports/latest)",
    )
    ev.add_argument("--workdir", type=Path, help="keep the evaluation repository here (default: a temp dir)")
    ev.add_argument(
        "--connect",
        metavar="HOST:PORT",
        help="use a running gateway (policy flag) that serves "
        "the evaluation repository in --workdir, instead of starting one; a secured one takes the "
        "client credentials below (docs/security.md)",
    )
    credentials.add_arguments(ev)
    ev.add_argument(
        "--ensemble",
        choices=("omnibus", "fisher", "union"),
        default="omnibus",
        help="how the evaluation models' detectors combine (default omnibus)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from guard.tools.evaluation.run import main as evaluate_main  # lazy: torchattacks, matplotlib

    return evaluate_main(args)
