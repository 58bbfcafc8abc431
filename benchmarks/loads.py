"""One load point against one server: a closed-loop or Poisson open-loop run, with the gateway's
own per-stage view (from /metrics) when the server is the gateway."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from benchmarks import stages
from benchmarks.loadgen import closed_loop, open_loop


@dataclass
class Target:
    """Where a configuration is served and how to read its server-side view."""

    configuration: str
    grpc_target: str
    requests: list[bytes]
    metrics_url: str | None = None
    metrics_model: str | None = None


def measure(target: Target, duration: float, concurrency: int | None = None, rate: float | None = None) -> dict:
    """Closed loop at `concurrency`, or open loop at `rate` requests/s."""
    before = stages.scrape(target.metrics_url) if target.metrics_url else None
    if rate is None:
        run = asyncio.run(closed_loop(target.grpc_target, target.requests, concurrency, duration))
    else:
        run = asyncio.run(open_loop(target.grpc_target, target.requests, rate, duration))
    point = {
        "configuration": target.configuration,
        "loop": "closed" if rate is None else "open",
        "concurrency": concurrency,
        "rate": rate,
        **run.summary(),
    }
    if before is not None:
        point["server"] = stages.breakdown(before, stages.scrape(target.metrics_url), target.metrics_model)
    return point
