"""Latency and throughput of the guard next to its compute floor, the transport floor and MLServer,
measured in one run on one machine.

    python -m benchmarks.run --mode quick|full [--out reports/bench] [--profile] [--mlserver auto|yes|no]

Writes OUT/results.json, OUT/results.md (absolute figures and the target ratios, met or missed)
and OUT/<model>_latency_throughput.png. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks import floors, profiling, report, subjects
from benchmarks.echo_server import echo_server
from benchmarks.gateway_process import start_gateway
from benchmarks.loadgen import infer_requests
from benchmarks.loads import Target, measure
from benchmarks.peers import mlserver

log = logging.getLogger("benchmarks.run")
GATEWAY = ("passthrough", "squeeze", "full_flag", "full_enforce")
PEERS = {"mlserver": 0, "mlserver_batched": 16}  # configuration -> MLServer max_batch_size
EVERYTHING = ("echo", *GATEWAY, *PEERS)


@dataclass(frozen=True)
class Plan:
    models: dict[str, tuple[str, ...]]
    """Model -> the configurations measured on it."""
    concurrencies: dict[str, tuple[int, ...]]
    duration: float
    """Seconds per load point (after a 0.5 s warm-up)."""
    open_fractions: tuple[float, ...]
    """Open-loop rates, as fractions of the configuration's best closed-loop throughput."""
    open_configurations: tuple[str, ...]
    calibration_samples: int
    floor_batches: tuple[int, ...] = (1, 16)
    profile: bool = False
    mlserver: str = "auto"

    def points(self) -> int:
        count = 0
        for model, configurations in self.models.items():
            for configuration in configurations:
                count += len(self.concurrencies[model])
                count += len(self.open_fractions) * (configuration in self.open_configurations)
        return count


def plan_for(mode: str) -> Plan:
    if mode == "quick":
        # digits in full detail; mobilenet only where its target is read (c=16).
        return Plan(
            models={"digits": EVERYTHING, "mobilenet_v3_small_fp32": ("echo", "passthrough", "full_flag")},
            concurrencies={"digits": (1, 16), "mobilenet_v3_small_fp32": (16,)},
            duration=2.0,
            open_fractions=(0.5,),
            open_configurations=("full_flag",),
            calibration_samples=32,
        )
    models = dict.fromkeys(subjects.MODELS, EVERYTHING)
    return Plan(
        models=models,
        concurrencies=dict.fromkeys(models, (1, 4, 16, 64)),
        duration=8.0,
        open_fractions=(0.5, 0.9),
        open_configurations=("echo", "passthrough", "full_flag", *PEERS),
        calibration_samples=96,
    )


def _sweep(plan: Plan, model: str, target: Target, bar: tqdm, profile_dir: Path | None = None) -> list[dict]:
    points = []
    for concurrency in plan.concurrencies[model]:
        bar.set_description(f"{model} {target.configuration} c={concurrency}")
        points.append(measure(target, plan.duration, concurrency=concurrency))
        bar.update()
    if target.configuration in plan.open_configurations:
        best = max(p["throughput_rps"] for p in points)
        for fraction in plan.open_fractions:
            rate = max(1.0, fraction * best)
            bar.set_description(f"{model} {target.configuration} {rate:.0f}/s")
            points.append({**measure(target, plan.duration, rate=rate), "fraction_of_best": fraction})
            bar.update()
    return [{"model": model, **p} for p in points]


def _profile(gateway, target: Target, plan: Plan, model: str, out: Path) -> dict:
    """A c=16 load while py-spy samples the gateway; the top frames go into the report."""
    concurrency = max(plan.concurrencies[model])
    collapsed = out / "profiles" / f"{model}_{target.configuration}.txt"
    recorder = profiling.start_recording(gateway.pid, collapsed, plan.duration)
    point = measure(target, plan.duration + 0.5, concurrency=concurrency)
    return {
        "model": model,
        "configuration": target.configuration,
        "concurrency": concurrency,
        "throughput_rps": point["throughput_rps"],
        **(profiling.finish_recording(recorder, collapsed) or {}),
    }


def _mlserver_wanted(plan: Plan) -> bool:
    if plan.mlserver == "no":
        return False
    if plan.mlserver == "yes":
        return True
    ready = mlserver.venv_path() / "bin" / "mlserver"
    if not ready.exists():
        log.warning("skipping MLServer: %s is not built (use --mlserver yes to build it, about a minute)", ready)
    return ready.exists()


def run_model(plan: Plan, subject: subjects.Subject, bar: tqdm, out: Path, results: dict) -> None:
    model, wanted = subject.name, plan.models[subject.name]
    session = floors.session_for(subject.config)
    logits = subject.config.detection.logits_output
    for batch in plan.floor_batches:
        results["floors"].append(
            {
                "model": model,
                "kind": "model",
                **floors.ort_floor(session, logits, subject.inputs, batch, min(plan.duration, 3.0)),
            }
        )
    rows = [np.ascontiguousarray(subject.inputs[i : i + 1]) for i in range(len(subject.inputs))]
    name = subject.config.detection.guarded_input

    if "echo" in wanted:
        with echo_server(subject.output_shape) as grpc_target:
            echo = Target("echo", grpc_target, infer_requests("passthrough", name, rows))
            results["points"] += _sweep(plan, model, echo, bar)

    if any(c in wanted for c in GATEWAY):
        with start_gateway(subject.repository) as gateway:
            for configuration in (c for c in GATEWAY if c in wanted):
                target = Target(
                    configuration,
                    gateway.target,
                    infer_requests(configuration, name, rows),
                    gateway.metrics_url,
                    configuration,
                )
                results["points"] += _sweep(plan, model, target, bar)
                if plan.profile and configuration in ("passthrough", "full_flag"):
                    bar.set_description(f"{model} {configuration} profile")
                    results["profiles"].append(_profile(gateway, target, plan, model, out))
        if "full_flag" in wanted:
            # The compute floor of the full guard: the batch the gateway ran at its best, times 1 + K rows.
            best = max(
                (
                    p
                    for p in results["points"]
                    if p["model"] == model and p["configuration"] == "full_flag" and p["loop"] == "closed"
                ),
                key=lambda p: p["throughput_rps"],
            )
            guard_rows = round(best["server"]["backend_rows_per_row"]) or subject.guard_rows
            batch = max(1, round(best["server"]["mean_batch_size"]))
            floor = floors.ort_floor(session, logits, subject.inputs, batch * guard_rows, min(plan.duration, 3.0))
            results["floors"].append(
                {"model": model, "kind": "guard_rows", "guard_rows": guard_rows, "original_batch": batch, **floor}
            )

    peers = [c for c in PEERS if c in wanted]
    if peers and _mlserver_wanted(plan):
        for configuration in peers:
            bar.set_description(f"{model} {configuration} starting")
            with mlserver.MLServerProcess(subject.peer_onnx, model, max_batch_size=PEERS[configuration]) as peer:
                target = Target(configuration, peer.grpc_target, infer_requests(model, name, rows))
                results["points"] += _sweep(plan, model, target, bar)
    else:
        bar.update(
            sum(
                len(plan.concurrencies[model]) + len(plan.open_fractions) * (c in plan.open_configurations)
                for c in peers
            )
        )


def machine() -> dict:
    import os

    import onnxruntime
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("quick", "full"), default="quick")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--cache", type=Path, help="exported and calibrated models (default OUT/cache)")
    parser.add_argument("--models", nargs="+", choices=subjects.MODELS, help="a subset of the mode's models")
    parser.add_argument("--duration", type=float, help="seconds per load point (overrides the mode's)")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway under load (pass-through and full)")
    parser.add_argument(
        "--mlserver",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: only if .venvs/mlserver is built; yes: build it if needed",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = plan_for(args.mode)
    plan = replace(
        plan,
        profile=args.profile,
        mlserver=args.mlserver,
        duration=args.duration or plan.duration,
        models={m: c for m, c in plan.models.items() if not args.models or m in args.models},
    )
    out = args.out
    cache = args.cache or out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {
        "mode": args.mode,
        "command": command,
        "machine": machine(),
        "plan": {"duration": plan.duration, "concurrencies": plan.concurrencies, "open_fractions": plan.open_fractions},
        "floors": [],
        "points": [],
        "profiles": [],
    }
    with tqdm(total=plan.points(), unit="load") as bar:
        for model in plan.models:
            bar.set_description(f"{model} preparing")
            subject = subjects.prepare(model, out / "work", cache, plan.calibration_samples)
            run_model(plan, subject, bar, out, results)
    results["elapsed_s"] = time.monotonic() - started
    results["targets"] = report.targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(report.markdown(results))
    for model in plan.models:
        report.plot(results, model, out / f"{model}_latency_throughput.png")
    print(f"wrote {out / 'results.md'} ({results['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
