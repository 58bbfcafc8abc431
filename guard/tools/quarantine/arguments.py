"""The quarantine's command-line surface: `guard serve --quarantine DIR [--quarantine-max-bytes N]`
and `guard quarantine list|export`. Parsing only; the bodies import what they need when run."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    """A positive size in bytes, optionally with a binary unit: 1073741824, 512M, 2G."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    value = int(match.group(1)) * UNITS[match.group(2).upper()] if match else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size in bytes (e.g. 1073741824, 512M, 2G), got {text!r}")
    return value


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--quarantine",
        type=Path,
        metavar="DIR",
        help="keep every request whose verdict is not clean (its inputs, verdict, scores, client "
        "identity) in a durable store in DIR (docs/quarantine.md); off by default",
    )
    serve.add_argument(
        "--quarantine-max-bytes",
        type=byte_size,
        metavar="N",
        help="the most the quarantined records may hold; the oldest are deleted past it (default 1G)",
    )


def quarantine_settings(args: argparse.Namespace):
    """The serve command's QuarantineSettings, or None when --quarantine is not given."""
    from guard.serving.quarantine.settings import DEFAULT_MAX_BYTES, QuarantineSettings

    if args.quarantine is None:
        if args.quarantine_max_bytes is not None:
            raise SystemExit("guard serve: --quarantine-max-bytes needs --quarantine DIR")
        return None
    return QuarantineSettings(args.quarantine, args.quarantine_max_bytes or DEFAULT_MAX_BYTES)


class _OneLineErrors(argparse.ArgumentParser):
    """A bad argument is one line naming it (`guard quarantine list: the following arguments are
    required: --dir`), not a usage block."""

    def error(self, message: str):
        raise SystemExit(f"{self.prog}: {message}")

    def parse_known_args(self, args=None, namespace=None):
        # As a subcommand, arguments it does not know would otherwise be reported by the top-level
        # parser, with its usage.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def add_commands(commands) -> None:
    quarantine = commands.add_parser("quarantine", help="read the quarantine of flagged requests (docs/quarantine.md)")
    actions = quarantine.add_subparsers(dest="action", required=True, parser_class=_OneLineErrors)
    listing = actions.add_parser("list", help="one line per record: id, time, model, verdict, identity, sizes")
    export = actions.add_parser(
        "export",
        help="an .npz that guard scan-data reads (x: the inputs, y: the model's answers) and a JSONL "
        "sidecar with each record's metadata",
    )
    for sub in (listing, export):
        sub.add_argument("--dir", type=Path, required=True, help="the directory guard serve --quarantine wrote")
        sub.add_argument("--model", help="only this model's records")
    export.add_argument("--out", type=Path, required=True, help="FILE.npz; the sidecar is FILE.jsonl")
    quarantine.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from guard.tools.quarantine.commands import run

    return run(args)
