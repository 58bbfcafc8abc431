"""The scan subcommands' bodies (guard.tools.cli only parses and delegates here)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    import torch

    from guard.tools.scans.inputs import resolve_model

    torch.manual_seed(args.seed)
    target = resolve_model(args.model)
    out = args.out or Path("reports") / "scans" / target.name
    progress = not args.no_progress
    if args.scan == "scan-model":
        summary = _scan_model(args, target, out, progress)
    elif args.scan == "scan-data":
        summary = _scan_data(args, target, out)
    else:
        summary = _audit(args, target, out, progress)
    brief = {k: v for k, v in summary.items() if not isinstance(v, (list, dict)) or k in ("flagged_classes",)}
    json.dump({**brief, "report": str(out)}, sys.stdout, indent=1, default=str)
    print()
    return 0


def _scan_model(args, target, out, progress) -> dict:
    from guard.tools.scans.inputs import samples
    from guard.tools.scans.model_scan import scan_model
    from guard.tools.scans.neural_cleanse import CleanseOptions

    x, y = samples(target, args.data, "calibration")
    options = CleanseOptions(seed=args.seed)
    options = replace(options, steps=args.steps or options.steps, batch_size=args.batch_size or options.batch_size)
    source = str(args.data) if args.data else "digits calibration split"
    return scan_model(target, x, y, out, source, options, progress)


def _scan_data(args, target, out) -> dict:
    from guard.tools.scans.data_scan import scan_data
    from guard.tools.scans.inputs import load_npz, poison_indices, samples, training_set

    x, y, source = training_set(target, args.data)
    poisoned, _ = poison_indices(args.poison_indices, target)
    reference = None
    if not args.no_reference:
        if args.reference is not None:
            reference = load_npz(args.reference, need_labels=True)
        elif target.takes_digits:
            reference = samples(target, None, "calibration")
    return scan_data(target, x, y, out, source, reference, poisoned, args.poison_rate, args.seed)


def _audit(args, target, out, progress) -> dict:
    from guard.tools.scans.audit import AuditOptions, audit
    from guard.tools.scans.inputs import samples

    x, y = samples(target, args.data, "test", need_labels=True)
    source = str(args.data) if args.data else "digits test split"
    return audit(target, x, y, out, source, AuditOptions(seed=args.seed), progress)
