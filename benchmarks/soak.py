"""Soak: `guard serve` on the demo repository under a steady request rate for a long time. Does its
memory grow, does its latency drift, does anything but OK come back?

    .venv/bin/python -m benchmarks.soak --minutes 30 --rate 200      # the real run
    .venv/bin/python -m benchmarks.soak --minutes 1 --rate 100       # a quick check

Open loop: requests go out on a fixed schedule (`--rate` per second) from `--clients` tritonclient
clients in turn (async_infer), whatever the answers do. A closed loop would slow down with the
gateway and hide the drift it is meant to find (coordinated omission); here a slower gateway
builds a backlog, and latency counts from each request's scheduled time. After `--warmup-seconds`
of the same load (first-call allocations, arenas), every minute records the gateway's resident
memory (VmRSS in /proc/PID/status) and the p99 of the requests scheduled that minute.

Prints the RSS at the start and after each minute with the growth from the first minute to the
last, the per-minute p99 with its drift (last minute over first, and a least-squares slope in ms
per minute), and every status code other than OK (plus requests never answered). `--json PATH`
also writes the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from benchmarks.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPOSITORY = ROOT / "examples" / "guard_examples" / "repository"


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Record:
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    """(scheduled, answered, status) per request, times in time.monotonic()."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    outstanding: int = 0

    def callback(self, scheduled: float):
        def done(result, error) -> None:
            code = "OK" if error is None else (error.status() or "UNKNOWN").removeprefix("StatusCode.")
            with self.lock:
                self.answers.append((scheduled, time.monotonic(), code))
                self.outstanding -= 1

        return done


def inputs(rows: int = 256) -> list[triton.InferInput]:
    """One-row requests from the demo's held-out digits (built once: tritonclient serializes at send)."""
    from benchmarks.repositories import load_split

    x, _ = load_split("test")
    tensors = []
    for row in np.ascontiguousarray(x[:rows], np.float32):
        tensor = triton.InferInput("input", [1, *row.shape], "FP32")
        tensor.set_data_from_numpy(row[None])
        tensors.append(tensor)
    return tensors


def run_load(
    target: str, pid: int, model: str, rate: float, minutes: int, warmup: float, clients: int, client_timeout: float
) -> dict:
    tensors = inputs()
    record = Record()
    pool = [triton.InferenceServerClient(target) for _ in range(clients)]
    rss: list[tuple[float, int]] = []
    late = 0
    start = time.monotonic()
    measured_from = start + warmup
    end = measured_from + 60.0 * minutes
    next_sample = measured_from
    i = 0
    try:
        while True:
            scheduled = start + i / rate
            if scheduled >= end:
                break
            now = time.monotonic()
            if now >= next_sample and next_sample < end:  # when measuring starts, then after each minute
                rss.append((now - measured_from, rss_bytes(pid)))
                next_sample += 60.0
            if scheduled > now:
                time.sleep(scheduled - now)
            elif now - scheduled > 0.05:
                late += 1  # the sender itself fell behind: the figures understate the rate
            with record.lock:
                record.outstanding += 1
            pool[i % clients].async_infer(
                model, [tensors[i % len(tensors)]], record.callback(scheduled), client_timeout=client_timeout
            )
            i += 1
        rss.append((time.monotonic() - measured_from, rss_bytes(pid)))  # after the last minute
        deadline = time.monotonic() + client_timeout + 5
        while record.outstanding and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for client in pool:
            client.close()
    return summarize(record, rss, measured_from, minutes, rate, late, sent=i)


def summarize(
    record: Record, rss: list[tuple[float, int]], measured_from: float, minutes: int, rate: float, late: int, sent: int
) -> dict:
    with record.lock:
        answers = list(record.answers)
        unanswered = record.outstanding
    per_minute: dict[int, list[float]] = collections.defaultdict(list)
    codes: collections.Counter = collections.Counter()
    for scheduled, answered, code in answers:
        if scheduled < measured_from:
            continue  # warm-up
        codes[code] += 1
        if code == "OK":
            per_minute[min(int((scheduled - measured_from) // 60), minutes - 1)].append(answered - scheduled)
    p99 = [float(np.percentile(per_minute[m], 99) * 1e3) if per_minute[m] else None for m in range(minutes)]
    known = [(m, v) for m, v in enumerate(p99) if v is not None]
    slope = float(np.polyfit([m for m, _ in known], [v for _, v in known], 1)[0]) if len(known) >= 2 else None
    first, last = (known[0][1], known[-1][1]) if known else (None, None)
    # RSS: the sample when measuring starts and one after each minute; growth from the end of the
    # first minute to the end of the last (with one minute: from its start to its end).
    marks = [value for _, value in rss]
    base = marks[1] if minutes > 1 else marks[0]
    unexpected = {code: n for code, n in codes.items() if code != "OK"}
    if unanswered:
        unexpected["NO_ANSWER"] = unanswered
    return {
        "rate_per_s": rate,
        "minutes": minutes,
        "sent": sent,
        "sender_late": late,
        "codes": dict(codes),
        "unexpected_codes": unexpected,
        "rss_mib": [round(v / 2**20, 1) for v in marks],
        "rss_growth_mib": round((marks[-1] - base) / 2**20, 2),
        "rss_growth_percent": round(100.0 * (marks[-1] - base) / base, 2),
        "p99_ms_per_minute": [None if v is None else round(v, 3) for v in p99],
        "p50_ms": round(
            float(np.percentile([a - s for s, a, c in answers if c == "OK" and s >= measured_from], 50) * 1e3), 3
        )
        if codes.get("OK")
        else None,
        "p99_drift_ratio": round(last / first, 3) if first else None,
        "p99_slope_ms_per_minute": None if slope is None else round(slope, 4),
    }


def report(figures: dict, log_tail: list[str]) -> str:
    lines = [
        f"soak: {figures['minutes']} min at {figures['rate_per_s']:g} requests/s open loop, "
        f"{figures['sent']} sent, warm-up included ({figures['sender_late']} sent more than 50 ms late)"
    ]
    rss = figures["rss_mib"]
    lines.append(
        f"RSS MiB: start {rss[0]}, after each minute {rss[1:]}; growth first minute to last "
        f"{figures['rss_growth_mib']:+.2f} MiB ({figures['rss_growth_percent']:+.2f}%)"
    )
    p99 = ", ".join("-" if v is None else f"{v:.2f}" for v in figures["p99_ms_per_minute"])
    slope = figures["p99_slope_ms_per_minute"]
    lines.append(
        f"p99 ms per minute: [{p99}]; p50 overall {figures['p50_ms']} ms; drift last/first "
        f"{figures['p99_drift_ratio']}x" + ("" if slope is None else f", slope {slope:+.3f} ms/minute")
    )
    unexpected = figures["unexpected_codes"]
    lines.append(
        f"status codes: {figures['codes']}; unexpected (anything but OK): {unexpected if unexpected else 'none'}"
    )
    problems = [line.rstrip() for line in log_tail if " WARNING " in line or " ERROR " in line]
    if problems:
        lines.append(f"gateway warnings and errors ({len(problems)}, last 5):")
        lines.extend("  " + line for line in problems[-5:])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, open loop (default 200)")
    parser.add_argument("--clients", type=int, default=4, help="tritonclient clients sending in turn (default 4)")
    parser.add_argument("--warmup-seconds", type=float, default=10.0)
    parser.add_argument("--repository", type=Path, default=DEMO_REPOSITORY)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--client-timeout", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.minutes < 1 or args.rate <= 0:
        parser.error("--minutes must be at least 1 and --rate positive")
    # The load stops before the gateway does: no drain period to wait out at the end.
    with start_gateway(args.repository, "--drain-seconds", "0") as gateway:
        figures = run_load(
            gateway.target,
            gateway.pid,
            args.model,
            args.rate,
            args.minutes,
            args.warmup_seconds,
            args.clients,
            args.client_timeout,
        )
        tail = list(gateway.log_tail)
    print(report(figures, tail))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
