"""The `guard` command line: one subcommand per module of guard.tools.commands, plus quarantine's."""

from __future__ import annotations

import argparse
import logging
import sys

from guard.protocol.errors import GuardError
from guard.tools.commands import calibrate, evaluate, replay, scans, serve
from guard.tools.quarantine import arguments as quarantine

# In the order `guard --help` lists them.
COMMANDS = (serve, calibrate, evaluate, scans, replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guard", description="Inference guard gateway (KServe v2 gRPC).")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(commands)
    quarantine.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except GuardError as exc:
        logging.getLogger("guard").error("%s", exc.message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
