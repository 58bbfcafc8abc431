"""The guard as a sidecar in front of MLServer, on the demo `digits` model: the latency it adds, and
how fast it recovers when the upstream restarts.

    python -m benchmarks.remote_chain [--duration 3] [--rounds 3] [--restarts 3] [--out results/remote_chain.json]

Measured in one run on this machine, each server in its own process, 1-row requests from a
closed-loop client (benchmarks/loadgen.py) at concurrency 1 and 16. Every path is measured once
per round, the paths interleaved, and the table gives each figure's median over the rounds, so
that load from elsewhere on a shared machine hits every path alike. Paths:
- mlserver: the client straight to MLServer (the demo's model file through the minimal runtime);
- guard through -> mlserver: `guard serve` with the shipped detectors, every batch's originals
  and squeezed copies going to MLServer as one request (3 rows per original row);
- guard forward_clean -> mlserver: the guard scores on its local copy, then forwards the requests
  that pass (1 row per original row);
- guard local: the same guard running the model in process, no upstream (the guard's own cost).
Recovery: MLServer is killed and restarted under a steady trickle of requests through the guard;
recovery is the time from MLServer answering again (polled directly every 5 ms) to the first
request that succeeds through the guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway_process import gateway
from benchmarks.loadgen import closed_loop, infer_requests
from benchmarks.peers.mlserver import MLServerProcess
from benchmarks.repositories import load_split
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc

REPOSITORY = Path(__file__).resolve().parents[1] / "examples" / "guard_examples" / "repository"
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
]


def guard_repository(folder: Path, target: str, mode: str) -> Path:
    """The shipped digits entry with [backend] pointing at `target`; two instances so a batch's
    upstream round trip overlaps the next batch."""
    directory = folder / mode / "digits"
    shutil.copytree(REPOSITORY / "digits", directory, dirs_exist_ok=True)
    path = directory / "config.toml"
    text = path.read_text().replace(
        "[backend]\n", f'[backend]\nkind = "remote"\ntarget = "{target}"\nmode = "{mode}"\ntimeout_s = 2.0\n', 1
    )
    path.write_text(text.replace("max_queue_size = 1024\n", "max_queue_size = 1024\ninstances = 2\n", 1))
    return directory.parent


def local_repository(folder: Path) -> Path:
    directory = folder / "local" / "digits"
    shutil.copytree(REPOSITORY / "digits", directory, dirs_exist_ok=True)
    return directory.parent


def latencies(targets: dict[str, str], requests: list[bytes], duration: float, rounds: int) -> dict[str, dict]:
    """{path: {"c=N": median summary over rounds, with every round's too}}, paths interleaved."""
    runs: dict[str, dict[str, list[dict]]] = {path: {"c=1": [], "c=16": []} for path in targets}
    for _ in range(rounds):
        for concurrency in (1, 16):
            for path, target in targets.items():
                summary = asyncio.run(closed_loop(target, requests, concurrency, duration)).summary()
                runs[path][f"c={concurrency}"].append(summary)
    return {
        path: {
            c: {
                **{
                    key: statistics.median(r[key] for r in rounds_)
                    for key in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms")
                },
                "rounds": rounds_,
            }
            for c, rounds_ in by_c.items()
        }
        for path, by_c in runs.items()
    }


class Poller:
    """Calls `probe` every `period` seconds on its own thread; records when it succeeded."""

    def __init__(self, probe, period: float = 0.005):
        self.probe, self.period = probe, period
        self.successes: list[float] = []
        self.failures: list[tuple[float, str, float]] = []  # (when, status, seconds the call took)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.probe()
                self.successes.append(time.monotonic())
            except grpc.RpcError as exc:
                self.failures.append((time.monotonic(), exc.code().name, time.monotonic() - start))
            time.sleep(self.period)

    def first_success_after(self, moment: float) -> float | None:
        return min((t for t in self.successes if t > moment), default=None)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def recovery(peer: MLServerProcess, guard_target: str, request: bytes, restarts: int) -> dict:
    upstream = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(peer.grpc_target, options=FAST_RECONNECT))
    guard = grpc.insecure_channel(guard_target).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    times, failures = [], []
    with (
        Poller(lambda: upstream.ModelReady(pb.ModelReadyRequest(name=peer.name), timeout=0.5)) as direct,
        Poller(lambda: guard(request, timeout=1.0)) as through,
    ):
        for _ in range(restarts):
            time.sleep(1.0)
            peer.kill()
            killed = time.monotonic()
            time.sleep(1.0)
            peer.start()
            back = direct.first_success_after(killed)
            deadline = time.monotonic() + 10
            while (ok := through.first_success_after(back)) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            times.append(None if ok is None else ok - back)
            failures.extend((code, seconds) for t, code, seconds in through.failures if t > killed)
    measured = [t for t in times if t is not None]
    codes = [code for code, _ in failures]
    return {
        "restarts": restarts,
        "recovery_s": times,
        "median_s": statistics.median(measured) if measured else None,
        "max_s": max(measured) if measured else None,
        "failure_codes": {code: codes.count(code) for code in set(codes)},
        "failure_ms_p50": 1e3 * statistics.median(s for _, s in failures) if failures else None,
        "failure_ms_max": 1e3 * max(s for _, s in failures) if failures else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per latency measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per path (interleaved)")
    parser.add_argument("--restarts", type=int, default=3, help="upstream restarts for the recovery time")
    parser.add_argument("--out", type=Path, default=Path("results/remote_chain.json"))
    args = parser.parse_args()
    x, _ = load_split("test")
    requests = infer_requests("digits", "input", [np.ascontiguousarray(x[i : i + 1]) for i in range(len(x))])
    results: dict[str, dict] = {}
    folder = Path(tempfile.mkdtemp(prefix="remote-chain-"))
    try:
        with (
            MLServerProcess(REPOSITORY / "digits" / "model.onnx", "digits") as peer,
            gateway(local_repository(folder)) as (local, _),
            gateway(guard_repository(folder, peer.grpc_target, "through")) as (through, _),
            gateway(guard_repository(folder, peer.grpc_target, "forward_clean")) as (forward, _),
        ):
            targets = {
                "mlserver": peer.grpc_target,
                "guard local (no upstream)": local,
                "guard through -> mlserver": through,
                "guard forward_clean -> mlserver": forward,
            }
            results.update(latencies(targets, requests, args.duration, args.rounds))
            results["recovery"] = recovery(peer, through, requests[0], args.restarts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    base = results["mlserver"]
    print("| path | concurrency | requests/s | p50 ms | p99 ms | p50 added ms |\n|---|---|---|---|---|---|")
    for name, runs in results.items():
        if name == "recovery":
            continue
        for c, r in runs.items():
            print(
                f"| {name} | {c[2:]} | {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['p50_ms'] - base[c]['p50_ms']:+.2f} |"
            )
    rec = results["recovery"]
    print(
        f"\nrecovery after {rec['restarts']} upstream restarts: "
        + ", ".join(f"{t * 1e3:.0f} ms" if t is not None else "none" for t in rec["recovery_s"])
        + f"; failures while down: {rec['failure_codes']}, each answered in "
        f"{rec['failure_ms_p50']:.2f} ms (median), {rec['failure_ms_max']:.1f} ms (slowest)"
    )


if __name__ == "__main__":
    main()
