"""What the shared query-attack store costs per query (guard.serving.shared_queries), against the
in-process store, on the same stream: one client's near-duplicate probe filling its store, or
unrelated queries.

    python -m benchmarks.shared_store [--queries 1000] [--stream probe|distinct] [--redis-server PATH]

Starts a real redis-server (no persistence) on a free local port, feeds the same fingerprints and
answers to both stores, and prints the median and 99th percentile seconds per query, the ratio of
the medians, and the store's memory per stored query (Redis' INFO used_memory before and after).
Local loopback only: across a network, add its round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import time

import numpy as np

from guard.detection.queries import QuerySettings, QueryStore, fingerprints
from guard.serving.shared_queries import SharedQueryStore, connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(kind: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`probe`: noisy copies of one 16x16 point whose answers flip, every query a near-duplicate of
    every other (the store's worst case: each hash's set holds every stored query); `distinct`:
    unrelated queries, as most clients send."""
    rng = np.random.default_rng(seed)
    if kind == "probe":
        rows = np.clip(rng.uniform(0, 1, 256) + rng.normal(0, 0.01, (count, 256)), 0, 1)
    else:
        rows = rng.uniform(0, 1, (count, 256))
    return rows, rng.integers(0, 2, count)


async def shared_times(url: str, prints: np.ndarray, answers: np.ndarray, settings: QuerySettings) -> list[float]:
    client = connect(url)
    store = SharedQueryStore(client, "bench", settings)
    times = []
    try:
        for i in range(len(prints)):
            start = time.perf_counter()
            await store.observe("client", prints[i : i + 1], answers[i : i + 1], float(i))
            times.append(time.perf_counter() - start)
        memory = await client.info("memory")
    finally:
        await client.aclose()
    times.append(float(memory["used_memory"]))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--redis-server", default=shutil.which("redis-server"))
    parser.add_argument("--stream", choices=("probe", "distinct"), default="probe")
    args = parser.parse_args(argv)
    if not args.redis_server:
        raise SystemExit("benchmarks.shared_store: redis-server not found (apt-get install redis-server)")
    settings = QuerySettings()
    rows, answers = stream(args.stream, args.queries, 0)
    prints = fingerprints(rows, settings)
    local = QueryStore(settings)
    local_times = []
    for i in range(len(prints)):
        start = time.perf_counter()
        local.observe("client", prints[i : i + 1], answers[i : i + 1], float(i))
        local_times.append(time.perf_counter() - start)
    port = free_port()
    server = subprocess.Popen(
        [args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{port}/0"
        baseline = asyncio.run(_memory(url))
        *shared, used = asyncio.run(shared_times(url, prints, answers, settings))
    finally:
        server.terminate()
        server.wait(timeout=10)
    for name, times in (("in process", local_times), ("shared (Redis, loopback)", shared)):
        ms = 1000 * np.array(times)
        print(f"{name}: median {np.median(ms):.3f} ms, p99 {np.quantile(ms, 0.99):.3f} ms per query")
    print(f"ratio of medians (shared / in process): {np.median(shared) / np.median(local_times):.1f}x")
    print(f"Redis memory per stored query: {(used - baseline) / args.queries:.0f} bytes")


async def _memory(url: str) -> float:
    client = connect(url)
    try:
        return float((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


if __name__ == "__main__":
    main()
