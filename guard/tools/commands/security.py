"""`guard serve`'s security options: TLS, client identity, explain grants, per-client limits, query-attack
detection and its shared store, and what /metrics publishes (docs/security.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from guard.tools.commands.values import positive_float, positive_int

QUERY_STORE_ENV = "GUARD_QUERY_STORE"
STORE_SCHEMES = ("redis", "rediss", "unix")


def identities(text: str) -> list[str]:
    """One --explain-identities value: a certificate subject as it is (subjects hold commas and
    '='; token names and addresses never hold '='), anything else split on commas."""
    if "=" in text:
        return [text.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def add_options(serve: argparse.ArgumentParser) -> None:
    """TLS, client identity, explain grants and what /metrics publishes (docs/security.md)."""
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics binds to, apart from --host (default 127.0.0.1)",
    )
    serve.add_argument(
        "--publish-thresholds",
        action="store_true",
        help="publish the calibrated thresholds (guard_detector_threshold) on /metrics; off by default: "
        "they tell an attacker how far an input may be pushed unflagged",
    )
    serve.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve gRPC server reflection (default on; deploy/ turns it off)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate chain: serve gRPC over TLS")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA certificates: clients must present a certificate they signed (mutual TLS); its "
        "subject is the client's identity. The TLS files reload when they change",
    )
    serve.add_argument(
        "--auth-tokens",
        type=Path,
        metavar="FILE",
        help="name:token lines: calls need the metadata 'authorization: Bearer <token>' (else "
        "UNAUTHENTICATED; health checks stay open), the name is the client's identity. Without it, "
        "the same lines are read from GUARD_AUTH_TOKENS when set",
    )
    serve.add_argument(
        "--explain-identities",
        type=identities,
        action="append",
        metavar="NAMES",
        help="identities granted raw detector scores (guard_explain): comma-separated token names, or "
        "one certificate subject per flag (repeat it); '*' for all. Default: everyone without "
        "authentication, nobody with it",
    )
    serve.add_argument(
        "--client-rate",
        type=positive_float,
        metavar="R",
        help="requests per second one client (identity) may send to a model, for models whose "
        "[clients] rate is unset; more are RESOURCE_EXHAUSTED with a retry hint (default: unlimited)",
    )
    serve.add_argument(
        "--client-burst",
        type=positive_int,
        metavar="N",
        help="requests one client may send at once above --client-rate (default: one second's worth)",
    )
    serve.add_argument(
        "--client-max-concurrency",
        type=positive_int,
        metavar="N",
        help="requests one client may have inside a model at once, for models whose [clients] "
        "max_concurrency is unset (default: unlimited)",
    )
    serve.add_argument(
        "--query-attack",
        choices=("off", "flag", "block"),
        help="black-box query-attack detection for every model, overriding [clients] query_attack: "
        "flag marks a flagged client's answers (guard_client_verdict), block refuses its requests "
        "(PERMISSION_DENIED) for [clients] block_seconds (docs/query-attacks.md)",
    )
    serve.add_argument(
        "--query-store",
        type=store_url,
        default=os.environ.get(QUERY_STORE_ENV) or None,
        metavar="URL",
        help="a Redis or Valkey server (redis://HOST:PORT/DB, rediss:// with TLS, unix://PATH) where every "
        f"replica keeps the query-attack state, so a client spreading its queries over replicas is seen "
        f"whole; also ${QUERY_STORE_ENV}, which keeps a password out of the process list (default: per process)",
    )


def store_url(value: str) -> str:
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in STORE_SCHEMES:
        raise argparse.ArgumentTypeError(f"a URL starting {', '.join(s + '://' for s in STORE_SCHEMES)}")
    return value
