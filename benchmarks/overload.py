"""The gateway under a flood: how fast it refuses what it cannot serve, which codes clients see,
how much memory it takes, what happens to the requests it does serve, and how long it takes to
serve at normal latency again once the flood stops.

    .venv/bin/python -m benchmarks.overload [--factor 10] [--flood-seconds 6] [--processes 2]

One run, one machine, all figures side by side (no thresholds: nothing here fails a build):
1. `guard serve` on the demo repository in its own process (port 0), warmed up;
2. the sustainable rate: closed loop at 32 concurrent callers, throughput S;
3. normal latency: Poisson arrivals at S/2, p50 and p99;
4. the flood: Poisson arrivals at `factor` x S for `flood-seconds`, from `processes` client
   processes, each spreading its calls over 16 channels (16 connections: many clients, not one
   multiplexed one), every call with a 10 s deadline and no retry; the server's RSS sampled every
   20 ms from /proc/PID/status;
5. recovery: Poisson arrivals at S/2 from the moment the flood's last call is sent; the recovery
   time is when the p99 of every later 250 ms window is back within twice the normal p99
   (and at least the normal p99 plus 5 ms).

Prints the table and writes it as JSON (--out). A client process is Python too: on a small host the
clients cannot always send `factor` x S; the achieved rate is printed next to the target.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.loadgen import closed_loop, infer_requests

READY = re.compile(r"guard ready: grpc=([\d.]+):(\d+)")
INFER = "/inference.GRPCInferenceService/ModelInfer"
DEADLINE = 10.0
CHANNELS = 16
WINDOW = 0.25


@contextlib.contextmanager
def launch(repository: Path, *args: str, timeout: float = 180.0):
    """`guard serve` on `repository` (ports 0) with its stderr in a file: yields (target, pid, log path)."""
    log = Path(tempfile.mkstemp(prefix="guard-serve-", suffix=".log")[1])
    # GUARD_SERVE replaces `-m guard` (e.g. a script that wraps the server) for experiments.
    command = [
        sys.executable,
        *os.environ.get("GUARD_SERVE", "-m guard").split(),
        "serve",
        "--repository",
        str(repository),
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
        *args,
    ]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stderr=sink, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout
        while not (match := READY.search(log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"{match.group(1)}:{match.group(2)}", process.pid, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS since start), in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) // 1024
    return values


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.period, self.peak, self._done = pid, period, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, memory(self.pid)["VmRSS"])
            time.sleep(self.period)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


async def _open_loop(
    target: str, requests: list[bytes], rate: float, start: float, duration: float, seed: int, channels: int
) -> list[tuple[float, float, str, float, float]]:
    """Poisson arrivals at `rate` from wall-clock `start` for `duration` s; each call's (scheduled
    time - start, latency from the moment it was sent, status, pushback hint in ms or -1, how late
    the client sent it). Latency counts from the send, not the schedule: a client process that
    falls behind its schedule is its own queue, reported as lag, not the server's."""
    rng = random.Random(seed)
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    calls = [channel.unary_unary(INFER) for channel in opened]
    records: list[tuple[float, float, str, float, float]] = []

    async def one(i: int, scheduled: float) -> None:
        hint = -1.0
        sent = time.time()
        try:
            await calls[i % channels](requests[i % len(requests)], timeout=DEADLINE)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            for key, value in exc.trailing_metadata() or ():
                if key == "grpc-retry-pushback-ms":
                    hint = float(value)
        records.append((scheduled - start, time.time() - sent, code, hint, sent - scheduled))

    await asyncio.sleep(max(0.0, start - time.time()))
    tasks, at, i = [], start, 0
    while (at := at + rng.expovariate(rate)) < start + duration:
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
        i += 1
    await asyncio.gather(*tasks)
    for channel in opened:
        await channel.close()
    return records


async def _closed_loop(
    target: str,
    requests: list[bytes],
    callers: int,
    start: float,
    duration: float,
    channels: int,
    honour_pushback: bool,
) -> list[tuple[float, float, str, float, float]]:
    """`callers` clients, each sending its next request as soon as it has its answer (or, with
    `honour_pushback`, after the retry hint of a refusal), from wall-clock `start` for `duration` s."""
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    calls = [channel.unary_unary(INFER) for channel in opened]
    records: list[tuple[float, float, str, float, float]] = []

    async def caller(n: int) -> None:
        i = n
        while (sent := time.time()) < start + duration:
            hint = -1.0
            try:
                await calls[n % channels](requests[i % len(requests)], timeout=DEADLINE)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                for key, value in exc.trailing_metadata() or ():
                    if key == "grpc-retry-pushback-ms":
                        hint = float(value)
            records.append((sent - start, time.time() - sent, code, hint, 0.0))
            if honour_pushback and hint >= 0:
                await asyncio.sleep(hint / 1e3)
            i += callers

    await asyncio.sleep(max(0.0, start - time.time()))
    await asyncio.gather(*(caller(n) for n in range(callers)))
    for channel in opened:
        await channel.close()
    return records


def _flood_process(target, requests, rate, start, duration, seed, channels, out, callers=0, honour=False) -> None:
    if callers:
        out.put(asyncio.run(_closed_loop(target, requests, callers, start, duration, channels, honour)))
    else:
        out.put(asyncio.run(_open_loop(target, requests, rate, start, duration, seed, channels)))


def percentiles(values, qs=(50, 99)) -> dict[str, float]:
    if not len(values):
        return {f"p{q}_ms": float("nan") for q in qs}
    array = np.asarray(values) * 1e3
    return {f"p{q}_ms": float(np.percentile(array, q)) for q in qs}


def recovery_seconds(records, normal_p99_ms: float) -> float | None:
    """First time (s after the flood's end) from which every WINDOW has p99 within the bound."""
    bound = max(2 * normal_p99_ms, normal_p99_ms + 5.0) / 1e3
    windows: dict[int, list[float]] = collections.defaultdict(list)
    for at, latency, code, *_ in records:
        windows[int(at / WINDOW)].append(latency if code == "OK" else DEADLINE)
    keys = sorted(windows)
    for k in keys:
        if all(np.percentile(windows[j], 99) <= bound for j in keys if j >= k):
            return k * WINDOW
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("examples") / "guard_examples" / "repository")
    parser.add_argument("--factor", type=float, default=10.0, help="flood rate over the sustainable rate")
    parser.add_argument("--flood-seconds", type=float, default=6.0)
    parser.add_argument("--recovery-seconds", type=float, default=15.0)
    parser.add_argument("--processes", type=int, default=2, help="client processes for the flood")
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help="flood with this many closed-loop clients instead (each sends again once answered)",
    )
    parser.add_argument(
        "--honour-pushback",
        action="store_true",
        help="closed-loop clients wait the retry hint of a refusal before sending again",
    )
    parser.add_argument("--serve-args", default="", help="extra `guard serve` arguments, space-separated")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from benchmarks.repositories import load_split

    x, _ = load_split("test")
    requests = infer_requests("digits", "input", [x[i : i + 1] for i in range(64)])
    result: dict[str, object] = {"host_cpus": os.cpu_count()}
    with launch(args.repository, *args.serve_args.split()) as (target, pid, log):
        asyncio.run(closed_loop(target, requests, 16, 2.0))  # warm-up
        idle = memory(pid)
        sustained = asyncio.run(closed_loop(target, requests, 32, 4.0)).summary()
        rate = sustained["throughput_rps"]
        result["sustainable_rps"] = rate
        normal = asyncio.run(_open_loop(target, requests, rate / 2, time.time() + 0.2, 4.0, 1, 4))
        normal_ok = [latency for _, latency, code, *_ in normal if code == "OK"]
        result["normal"] = {
            "rate_rps": rate / 2,
            **percentiles(normal_ok),
            "codes": dict(collections.Counter(code for _, _, code, *_ in normal)),
        }

        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        start = time.time() + 3.0  # the processes start (and import grpc) first
        flood_rate = args.factor * rate
        workers = [
            context.Process(
                target=_flood_process,
                args=(
                    target,
                    requests,
                    flood_rate / args.processes,
                    start,
                    args.flood_seconds,
                    100 + n,
                    CHANNELS,
                    out,
                    args.clients // args.processes,
                    args.honour_pushback,
                ),
            )
            for n in range(args.processes)
        ]
        for worker in workers:
            worker.start()
        sampler = RssSampler(pid)
        sampler.start()
        # Recovery traffic starts the moment the flood's last call is scheduled, alongside its drain.
        probe = asyncio.run(
            _open_loop(target, requests, rate / 2, start + args.flood_seconds, args.recovery_seconds, 2, 4)
        )
        flood = [record for _ in workers for record in out.get()]
        for worker in workers:
            worker.join()
        peak = sampler.stop()
        after = memory(pid)

    codes = collections.Counter(code for _, _, code, *_ in flood)
    refused = [latency for _, latency, code, *_ in flood if code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED")]
    served = [latency for _, latency, code, *_ in flood if code == "OK"]
    hints = [hint for _, _, _, hint, _ in flood if hint >= 0]
    lag = [late for *_, late in flood]
    result["flood"] = {
        "mode": (f"closed loop, {args.clients} clients" + (" honouring the retry hint" if args.honour_pushback else ""))
        if args.clients
        else f"open loop, {args.factor:g} x the sustainable rate",
        "target_rps": None if args.clients else flood_rate,
        "sent_rps": len(flood) / args.flood_seconds,
        "calls": len(flood),
        "client_lag": percentiles(lag),
        "codes": dict(codes.most_common()),
        "refusal": percentiles(refused),
        "served": {"rps": len(served) / args.flood_seconds, **percentiles(served)},
        "by_code": {code: percentiles([lat for _, lat, c, *_ in flood if c == code]) for code in codes},
        "retry_hint_ms": percentiles(np.asarray(hints) / 1e3) if hints else None,
    }
    result["rss_mib"] = {
        "idle": idle["VmRSS"],
        "peak_during_flood": peak,
        "after": after["VmRSS"],
        "hwm": after["VmHWM"],
    }
    result["recovery_s"] = recovery_seconds(probe, result["normal"]["p99_ms"])
    result["recovery_codes"] = dict(collections.Counter(code for _, _, code, *_ in probe))
    text = log.read_text()
    result["server_log"] = {"lines": text.count("\n"), "tracebacks": text.count("Traceback")}
    log.unlink()
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


def print_table(r: dict) -> None:
    f, n = r["flood"], r["normal"]
    rows = [
        ("host CPUs", f"{r['host_cpus']}"),
        ("sustainable rate (closed loop, 32 callers)", f"{r['sustainable_rps']:.0f} req/s"),
        ("normal latency at S/2 (p50 / p99)", f"{n['p50_ms']:.1f} / {n['p99_ms']:.1f} ms"),
        ("flood", f["mode"]),
        ("flood: target / sent", f"{f['target_rps'] or 0:.0f} / {f['sent_rps']:.0f} req/s ({f['calls']} calls)"),
        (
            "flood: client lag behind its schedule p50 / p99",
            f"{f['client_lag']['p50_ms']:.1f} / {f['client_lag']['p99_ms']:.1f} ms",
        ),
        ("flood: codes", ", ".join(f"{code} {count}" for code, count in f["codes"].items())),
        (
            "refusals (UNAVAILABLE + RESOURCE_EXHAUSTED) p50 / p99",
            f"{f['refusal']['p50_ms']:.1f} / {f['refusal']['p99_ms']:.1f} ms",
        ),
        *[(f"  {code} p50 / p99", f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f} ms") for code, v in f["by_code"].items()],
        (
            "retry hints p50 / p99",
            "-"
            if not f["retry_hint_ms"]
            else f"{f['retry_hint_ms']['p50_ms']:.0f} / {f['retry_hint_ms']['p99_ms']:.0f} ms",
        ),
        (
            "served during the flood: rate, p50 / p99",
            f"{f['served']['rps']:.0f} req/s, {f['served']['p50_ms']:.1f} / {f['served']['p99_ms']:.1f} ms",
        ),
        (
            "server RSS: idle / peak in flood / after",
            f"{r['rss_mib']['idle']} / {r['rss_mib']['peak_during_flood']} / {r['rss_mib']['after']} MiB",
        ),
        (
            "recovery to normal p99 after the flood",
            "not within the probe" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s",
        ),
        ("recovery probe codes", ", ".join(f"{c} {k}" for c, k in r["recovery_codes"].items())),
        ("server log", f"{r['server_log']['lines']} lines, {r['server_log']['tracebacks']} tracebacks"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
