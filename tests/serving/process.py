"""`guard serve` as its own process, the way a user starts it: free ports read back from its log,
every log line kept, signals sent for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT

READY = re.compile(r"guard ready: grpc=([\d.]+):(\d+) metrics=([\d.]+):(\d+)")


class ServeProcess:
    def __init__(self, repository: Path, *args: str, startup_timeout: float = 120.0):
        self.command = [sys.executable, "-m", "guard", "serve", "--repository", str(repository),
                        "--grpc-port", "0", "--metrics-port", "0", *args]
        self.startup_timeout = startup_timeout
        self.lines: list[str] = []
        self.grpc_url = self.metrics_url = ""
        self._ready = threading.Event()

    def __enter__(self) -> ServeProcess:
        self.process = subprocess.Popen(self.command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(self.startup_timeout):
            self.kill()
            raise AssertionError("guard serve never became ready:\n" + self.log)
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            ready = READY.search(line)
            if ready:
                self.grpc_url = f"{ready.group(1)}:{ready.group(2)}"
                self.metrics_url = f"http://{ready.group(3)}:{ready.group(4)}/metrics"
                self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def signal(self, number: int = signal.SIGTERM) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def metric(self, name: str, timeout: float = 5.0) -> float | None:
        """One sample's value (e.g. 'guard_queue_depth{model="digits"}') from /metrics; None if absent."""
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"no log line with {text!r}:\n{self.log}")
