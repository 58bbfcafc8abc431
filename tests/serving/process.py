"""`guard serve` as its own process, the way a user starts it: free ports read back from its log,
every log line kept, signals sent for real. `Traffic` keeps client threads sending at it with
tritonclient, each request's status recorded, to see what a stop or a reload does to them."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT

READY = re.compile(r"guard ready: grpc=([\d.]+):(\d+) metrics=([\d.]+):(\d+)")


class ServeProcess:
    def __init__(self, repository: Path, *args: str, startup_timeout: float = 120.0):
        self.command = [
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
        self.startup_timeout = startup_timeout
        self.lines: list[str] = []
        self.grpc_url = self.metrics_url = ""
        self._ready = threading.Event()

    def __enter__(self) -> ServeProcess:
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
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


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what} never held"
        time.sleep(0.005)


@dataclass(frozen=True)
class Answer:
    sent: float
    """time.monotonic() when the request went out."""
    done: float
    code: str
    """gRPC status name; OK for a result."""
    result: object = None


class Traffic:
    """`threads` clients, each sending the next request as soon as the previous one is answered
    (closed loop, the hardest case for a graceful stop), until `stop()`. After an UNAVAILABLE a client
    waits a little, as real clients back off, so a stopped server does not spin the test's CPUs."""

    def __init__(
        self,
        url: str,
        x: np.ndarray,
        threads: int = 8,
        model: str = "digits",
        client_timeout: float = 30.0,
        keep_results: bool = False,
    ):
        self.url, self.x, self.model = url, np.ascontiguousarray(x, np.float32), model
        self.client_timeout, self.keep_results = client_timeout, keep_results
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.client_timeout + 5)

    def _run(self, index: int) -> None:
        with triton.InferenceServerClient(self.url) as client:
            i = index
            while not self._stop.is_set():
                row = self.x[i % len(self.x)][None]
                tensor = triton.InferInput("input", list(row.shape), "FP32")
                tensor.set_data_from_numpy(row)
                sent = time.monotonic()
                try:
                    result = client.infer(self.model, [tensor], client_timeout=self.client_timeout)
                    code = "OK"
                except InferenceServerException as exc:
                    result, code = None, (exc.status() or "UNKNOWN").removeprefix("StatusCode.")
                with self._lock:
                    self.answers.append(Answer(sent, time.monotonic(), code, result if self.keep_results else None))
                if code == "UNAVAILABLE":
                    self._stop.wait(0.02)
                i += len(self._threads)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, answers: int, timeout: float = 30.0) -> None:
        """Until at least `answers` more requests than now are answered."""
        target = self.count() + answers
        wait_until(lambda: self.count() >= target, timeout, f"{answers} answers")

    def codes(self, sent_after: float = 0.0, sent_before: float = float("inf")) -> collections.Counter:
        with self._lock:
            return collections.Counter(a.code for a in self.answers if sent_after <= a.sent < sent_before)
