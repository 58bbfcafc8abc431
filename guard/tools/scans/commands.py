"""The scan subcommands' bodies (guard.tools.commands.scans only parses and delegates here)."""

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
    from guard.tools.scans.inputs import load_npz
    from guard.tools.scans.model_scan import scan_model
    from guard.tools.scans.neural_cleanse import CleanseOptions

    x, y = load_npz(args.data, target)
    options = CleanseOptions(seed=args.seed)
    options = replace(options, steps=args.steps or options.steps, batch_size=args.batch_size or options.batch_size)
    return scan_model(target, x, y, out, str(args.data), options, progress)


def _scan_data(args, target, out) -> dict:
    from guard.tools.scans.data_scan import scan_data
    from guard.tools.scans.inputs import load_npz, poison_indices

    x, y = load_npz(args.data, target, need_labels=True)
    poisoned = poison_indices(args.poison_indices, len(y))
    reference = load_npz(args.reference, target, need_labels=True) if args.reference is not None else None
    return scan_data(target, x, y, out, str(args.data), reference, poisoned, args.poison_rate, args.seed)


def _audit(args, target, out, progress) -> dict:
    from guard.tools.scans.audit import AuditOptions, audit
    from guard.tools.scans.inputs import load_npz

    x, y = load_npz(args.data, target, need_labels=True)
    return audit(target, x, y, out, str(args.data), AuditOptions(seed=args.seed), progress)
