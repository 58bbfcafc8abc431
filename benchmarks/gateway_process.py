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
from pathlib import Path

READY = re.compile(r"guard ready: grpc=([\d.]+):(\d+) metrics=(?:([\d.]+):(\d+)|off)")


@contextlib.contextmanager
def gateway(repository: Path, *args: str, timeout: float = 120.0):
    """Yields (grpc_target, metrics_url) of a gateway serving `repository`."""
    command = [sys.executable, "-m", "guard", "serve", "--repository", str(repository),
               "--grpc-port", "0", "--metrics-port", "0", *args]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline, lines = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                raise RuntimeError("gateway exited before it was ready:\n" + "".join(lines))
            lines.append(line)
            if match := READY.search(line):
                # Keep reading: a full stderr pipe would block the gateway's next log line.
                threading.Thread(target=collections.deque, args=(process.stderr, 200), daemon=True).start()
                yield f"{match.group(1)}:{match.group(2)}", f"http://{match.group(3)}:{match.group(4)}/metrics"
                break
        else:
            raise TimeoutError("gateway not ready in time:\n" + "".join(lines))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
