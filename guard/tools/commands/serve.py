"""`guard serve`: serve a model repository over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from guard.protocol.limits import MAX_CONCURRENCY, MAX_MESSAGE_BYTES
from guard.serving.policy import POLICIES
from guard.tools.commands import security
from guard.tools.commands.values import seconds
from guard.tools.quarantine import arguments as quarantine

# The checkout's demo repository, relative to where `guard serve` runs (the repository root in
# `make serve`); an installed wheel carries no demo, so elsewhere --repository is needed.
DEFAULT_REPOSITORY = Path("examples") / "guard_examples" / "repository"


def add(commands) -> None:
    serve = commands.add_parser("serve", help="serve a model repository over gRPC")
    serve.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="model repository (default: the shipped demo, examples/guard_examples/repository)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port (logged)")
    serve.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port; -1 disables")
    serve.add_argument("--policy", choices=POLICIES, help="override every model's policy")
    serve.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES)
    serve.add_argument(
        "--max-concurrency",
        type=int,
        default=MAX_CONCURRENCY,
        metavar="N",
        help="inference requests in flight at once (unary calls and stream requests); more are "
        f"refused with RESOURCE_EXHAUSTED and a retry hint (default {MAX_CONCURRENCY})",
    )
    serve.add_argument(
        "--shared-memory",
        action="store_true",
        help="accept Triton's system shared-memory extension: clients on this host pass tensors "
        "through /dev/shm (off by default: see docs/shared-memory.md)",
    )
    serve.add_argument("--torch-threads", type=int, default=1, help="threads for the guard's tensor work")
    serve.add_argument("--access-log", action="store_true", help="log one line per request")
    serve.add_argument(
        "--calibration",
        choices=("recalibrate", "strict", "trust"),
        help="where a model's thresholds were derived under another runtime: derive them again "
        "from its references (recalibrate), refuse to load (strict) or serve them (trust); "
        "default: each model's [calibration] mode (recalibrate unless set)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=seconds,
        default=5.0,
        help="after SIGTERM/SIGINT: health says NOT_SERVING while requests are still served for this "
        "long, so load balancers stop sending first (default 5: a few seconds of endpoint propagation "
        "plus one health-check interval)",
    )
    serve.add_argument(
        "--exit-timeout-seconds",
        type=seconds,
        default=30.0,
        help="the longest a graceful stop takes from the signal, drain included; requests still "
        "waiting then fail with UNAVAILABLE (default 30, as Triton's). A second signal stops at once",
    )
    serve.add_argument(
        "--model-control",
        action="store_true",
        help="allow the repository RPCs (tritonclient load_model/unload_model) to change what is "
        "served; SIGHUP re-reads the repository either way",
    )
    security.add_options(serve)
    quarantine.add_serve_options(serve)
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from guard.serving.client_settings import ClientSettings
    from guard.serving.server import serve_forever
    from guard.serving.settings import ServerSettings
    from guard.serving.tokens import ENVIRONMENT

    if not args.access_log:
        logging.getLogger("guard.access").setLevel(logging.WARNING)
    tokens_text = os.environ.get(ENVIRONMENT)
    if args.auth_tokens is not None and tokens_text is not None:
        logging.getLogger("guard").warning("%s is set but --auth-tokens wins: the variable is ignored", ENVIRONMENT)
    settings = ServerSettings(
        repository=args.repository,
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        policy=args.policy,
        max_message_bytes=args.max_message_bytes,
        max_concurrency=args.max_concurrency,
        torch_threads=args.torch_threads,
        shared_memory=args.shared_memory,
        calibration=args.calibration,
        drain_seconds=args.drain_seconds,
        exit_timeout_seconds=args.exit_timeout_seconds,
        model_control=args.model_control,
        metrics_host=args.metrics_host,
        publish_thresholds=args.publish_thresholds,
        reflection=args.reflection,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_tokens=args.auth_tokens,
        auth_tokens_text=tokens_text,
        explain_identities=None if args.explain_identities is None else tuple(sum(args.explain_identities, [])),
        client_limits=ClientSettings(
            rate=args.client_rate, burst=args.client_burst, max_concurrency=args.client_max_concurrency
        ),
        query_attack=args.query_attack,
        query_store=args.query_store,
        quarantine=quarantine.quarantine_settings(args),
    )
    asyncio.run(serve_forever(settings))
    return 0
