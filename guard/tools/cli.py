"""The `guard` command line: serve, calibrate, evaluate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from guard.protocol.errors import GuardError
from guard.protocol.limits import MAX_CONCURRENCY, MAX_MESSAGE_BYTES
from guard.serving.policy import POLICIES
from guard.tools import credentials
from guard.tools.quarantine import arguments as quarantine

# The checkout's demo repository, relative to where `guard serve` runs (the repository root in
# `make serve`); an installed wheel carries no demo, so elsewhere --repository is needed.
DEFAULT_REPOSITORY = Path("examples") / "guard_examples" / "repository"


def _serve(args: argparse.Namespace) -> int:
    from guard.serving.client_settings import ClientSettings
    from guard.serving.server import ServerSettings, serve_forever
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


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    missing = [str(p) for p in args.data if not p.exists()]
    if missing:
        raise SystemExit(f"guard calibrate: --data {missing[0]}: no such file or directory")
    if len(args.data) > 1 and args.model is None:
        raise SystemExit("guard calibrate: several --data sources (one per camera) need --model DIR")
    if args.model is not None:  # a model directory whose config says what it is (camera models)
        from guard.serving.model_config import load_model_config
        from guard.tools.calibrate_dir import calibrate_directory
        from guard.tools.clean_data import load_cameras

        samples = load_cameras(
            args.data, load_model_config(args.model, calibrated=False).inputs, stride=args.stride, limit=args.frames
        )
        report = calibrate_directory(
            args.model,
            samples,
            holdout_fraction=args.holdout_fraction,
            folds=args.folds,
            seed=args.seed,
            confidence=args.confidence,
        )
    else:
        from guard.tools.calibrate import calibrate_model, detector_tables

        if args.onnx is None or args.name is None or args.repository is None:
            raise SystemExit("guard calibrate: --onnx, --name and --repository (or --model DIR)")
        with np.load(args.data[0]) as data:
            if "x" not in data:
                raise SystemExit(f"{args.data[0]}: expected an array named 'x' (and optionally 'y')")
            x, y = data["x"], data.get("y")
        tables = detector_tables(
            args.onnx,
            bit_depths=args.bit_depth,
            medians=args.median,
            mahalanobis=args.mahalanobis,
            confidence_margin=args.confidence_margin,
            strip=args.strip,
            features=args.features,
        )
        report = calibrate_model(
            args.onnx,
            args.name,
            args.repository,
            x,
            y,
            target_fpr=args.target_fpr,
            confidence=args.confidence,
            holdout_fraction=args.holdout_fraction,
            seed=args.seed,
            value_range=tuple(args.range),
            policy=args.policy or "flag",
            detectors=tables,
            features=args.features,
            ensemble=args.ensemble,
            folds=args.folds,
        )
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from guard.tools.evaluation.run import main as evaluate_main  # lazy: torchattacks, matplotlib

    return evaluate_main(args)


def _scan(args: argparse.Namespace) -> int:
    from guard.tools.scans.commands import run  # lazy: torch, matplotlib

    return run(args)


def _identities(text: str) -> list[str]:
    """One --explain-identities value: a certificate subject as it is (subjects hold commas and
    '='; token names and addresses never hold '='), anything else split on commas."""
    if "=" in text:
        return [text.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guard", description="Inference guard gateway (KServe v2 gRPC).")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

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
        type=_seconds,
        default=5.0,
        help="after SIGTERM/SIGINT: health says NOT_SERVING while requests are still served for this "
        "long, so load balancers stop sending first (default 5: a few seconds of endpoint propagation "
        "plus one health-check interval)",
    )
    serve.add_argument(
        "--exit-timeout-seconds",
        type=_seconds,
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
    _add_security_options(serve)
    quarantine.add_serve_options(serve)
    serve.set_defaults(func=_serve)

    cal = commands.add_parser("calibrate", help="bring an ONNX classifier under the guard")
    cal.add_argument("--onnx", type=Path, help="a classifier to bring in (outputs logits first)")
    cal.add_argument("--name", help="model name (directory under the repository)")
    cal.add_argument("--repository", type=Path)
    cal.add_argument(
        "--model",
        type=Path,
        help="instead: calibrate this model directory as its config.toml describes it (any input and output kind)",
    )
    cal.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="clean samples: .npz ('x', optional labels "
        "'y'; with --model, one array per input), or with --model a folder of images or a video file; "
        "with --model, several: one per camera (per-camera baselines warm up on each)",
    )
    cal.add_argument("--frames", type=int, help="with a video or an image folder: use at most this many")
    cal.add_argument("--stride", type=int, default=1, help="with a video: keep every STRIDE-th frame")
    cal.add_argument("--target-fpr", type=float, default=0.05)
    cal.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="probability that the clean flag rate on new inputs stays at most the target (default 0.9)",
    )
    cal.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.3,
        help="share of the samples kept out of calibration to report the clean flag rate",
    )
    cal.add_argument("--range", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"))
    cal.add_argument("--policy", choices=POLICIES)
    cal.add_argument(
        "--bit-depth",
        type=int,
        action="append",
        metavar="BITS",
        help="a bit-depth squeezer (repeatable; default: 5 bits and a 2x2 median)",
    )
    cal.add_argument(
        "--median", type=int, action="append", metavar="SIZE", help="a SIZExSIZE median-filter squeezer (repeatable)"
    )
    cal.add_argument(
        "--mahalanobis",
        action=argparse.BooleanOptionalAction,
        help="the feature-space (Mahalanobis) detector (default: on when the model has a linear head)",
    )
    cal.add_argument(
        "--confidence-margin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the low-confidence detector, 1 - gap between the top two probabilities (default: on)",
    )
    cal.add_argument("--strip", type=int, metavar="N", help="add STRIP trigger detection with N blends (opt-in)")
    cal.add_argument("--features", help="the tensor feature detectors read (default: the last layer's input)")
    cal.add_argument(
        "--ensemble",
        choices=("omnibus", "fisher", "union"),
        default="omnibus",
        help="how detectors combine (docs/detection.md; default omnibus)",
    )
    cal.add_argument(
        "--folds", type=int, default=5, help="cross-fitting folds for detectors that learn from the samples (default 5)"
    )
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=_calibrate)

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
    ev.set_defaults(func=_evaluate)
    _add_scan_commands(commands)
    _add_replay_command(commands)
    quarantine.add_commands(commands)
    return parser


def _add_security_options(serve: argparse.ArgumentParser) -> None:
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
        type=_identities,
        action="append",
        metavar="NAMES",
        help="identities granted raw detector scores (guard_explain): comma-separated token names, or "
        "one certificate subject per flag (repeat it); '*' for all. Default: everyone without "
        "authentication, nobody with it",
    )
    serve.add_argument(
        "--client-rate",
        type=_positive_float,
        metavar="R",
        help="requests per second one client (identity) may send to a model, for models whose "
        "[clients] rate is unset; more are RESOURCE_EXHAUSTED with a retry hint (default: unlimited)",
    )
    serve.add_argument(
        "--client-burst",
        type=_positive_int,
        metavar="N",
        help="requests one client may send at once above --client-rate (default: one second's worth)",
    )
    serve.add_argument(
        "--client-max-concurrency",
        type=_positive_int,
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
        type=_store_url,
        default=os.environ.get(QUERY_STORE_ENV) or None,
        metavar="URL",
        help="a Redis or Valkey server (redis://HOST:PORT/DB, rediss:// with TLS, unix://PATH) where every "
        f"replica keeps the query-attack state, so a client spreading its queries over replicas is seen "
        f"whole; also ${QUERY_STORE_ENV}, which keeps a password out of the process list (default: per process)",
    )


QUERY_STORE_ENV = "GUARD_QUERY_STORE"
STORE_SCHEMES = ("redis", "rediss", "unix")


def _store_url(value: str) -> str:
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in STORE_SCHEMES:
        raise argparse.ArgumentTypeError(f"a URL starting {', '.join(s + '://' for s in STORE_SCHEMES)}")
    return value


def _replay(args: argparse.Namespace) -> int:
    if not args.video.is_file():
        raise SystemExit(f"guard replay: {args.video}: no such video file")
    from guard.tools.replay import main as replay_main  # lazy: tritonclient, PyAV

    return replay_main(args)


def _add_replay_command(commands) -> None:
    replay = commands.add_parser(
        "replay",
        help="stream a video as N cameras into a running guard: latency, "
        "verdicts, an annotated video (guard/tools/replay.py)",
    )
    replay.add_argument("video", type=Path)
    replay.add_argument("--target", required=True, help="the guard's gRPC address, HOST:PORT")
    replay.add_argument("--model", required=True)
    replay.add_argument("--cameras", type=int, default=4)
    replay.add_argument("--fps", type=float, default=10.0)
    replay.add_argument("--frames", type=int, default=100, help="frames of the video each camera sends")
    replay.add_argument("--boxes", choices=("yolo",), help="draw the model's detections in this format")
    replay.add_argument("--labels", type=Path, help="class names, one per line")
    replay.add_argument("--out", type=Path, default=Path("reports/replay"))
    credentials.add_arguments(replay)
    replay.set_defaults(func=_replay)


def _add_scan_commands(commands) -> None:
    """scan-model, scan-data, audit: offline checks before a model is served (docs/scans.md)."""
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
        sub.set_defaults(func=_scan, scan=name)


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
