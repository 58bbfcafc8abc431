"""Start `guard serve` in its own process (so client and server do not share a GIL) and learn its ports."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

READY = re.compile(r"guard ready: grpc=([\d.]+):(\d+) metrics=(?:([\d.]+):(\d+)|off)")


@dataclass
class Gateway:
    target: str
    """host:port of the gRPC server."""
    metrics_url: str
    pid: int
    log_tail: collections.deque
    """The last lines the gateway wrote to stderr."""


@contextlib.contextmanager
def start_gateway(repository: Path, *args: str, timeout: float = 120.0):
    """Yields a Gateway serving `repository` (extra `args` go to `guard serve`)."""
    command = [
        sys.executable,
        "-m",
        "guard",
        "serve",
        "--repository",
        str(repository),
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        *args,
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail: collections.deque = collections.deque(maxlen=200)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                raise RuntimeError("gateway exited before it was ready:\n" + "".join(tail))
            tail.append(line)
            if match := READY.search(line):
                # Keep reading stderr: a full pipe would stall the gateway's logging, and with it the gateway.
                threading.Thread(target=lambda: tail.extend(process.stderr), daemon=True).start()
                yield Gateway(
                    f"{match.group(1)}:{match.group(2)}",
                    f"http://{match.group(3)}:{match.group(4)}/metrics",
                    process.pid,
                    tail,
                )
                break
        else:
            raise TimeoutError("gateway not ready in time:\n" + "".join(tail))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def gateway(repository: Path, *args: str, timeout: float = 120.0):
    """Yields (grpc_target, metrics_url) of a gateway serving `repository`."""
    with start_gateway(repository, *args, timeout=timeout) as running:
        yield running.target, running.metrics_url
