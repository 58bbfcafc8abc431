"""Model updates without downtime: a changed model loads beside the copy that serves, and replaces it.

A (re)load reads and validates the model's directory, then builds its backend, detectors and
thresholds on a worker thread (an ONNX Runtime session, maybe a recalibration: seconds during which
the event loop keeps serving every model, the old copy of this one included). The new copy starts,
and once it is ready it replaces the old one in the data plane with one dict assignment on the loop
thread, so each request runs wholly on one copy or the other. Requests already routed to the old
copy finish there; it closes when the last of them is answered. A model that fails to load changes
nothing: the old copy keeps serving, and the error names the file and the key (logged, counted in
`guard_model_loads_total{result="failure"}`, and returned by the RPC that asked for it).

Two triggers:
- SIGHUP (`guard serve`): re-read the repository. Models whose directory changed since they were
  loaded are reloaded, new directories load, removed ones unload (Triton's poll mode, on demand).
- The KServe/Triton repository RPCs (tritonclient's `get_model_repository_index`, `load_model`,
  `unload_model`). The index is always readable; loading and unloading need `guard serve
  --model-control`, since any client that reaches the port could otherwise unload every model.

One load or unload runs at a time (a lock): two reloads of one model racing could otherwise swap
in the older of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from guard.protocol.errors import GuardError, InvalidInput, ModelNotFound
from guard.serving.host_calibration import HostBound
from guard.serving.logs import loggable
from guard.serving.metrics import GuardMetrics
from guard.serving.model_config import ModelConfig, load_model_config
from guard.serving.repository import load_repository
from guard.serving.runtime import ModelRuntime
from guard.serving.scan_gate import check_scan_gate

log = logging.getLogger("guard.serving.reload")

READY, UNAVAILABLE = "READY", "UNAVAILABLE"
"""Model states in the repository index, as Triton names them."""
# How long a new copy may take to report ready (a remote upstream's health) before the load
# gives up and the old copy keeps serving.
READY_TIMEOUT = 30.0
# How long a replaced copy waits for its last requests before the rest fail with UNAVAILABLE;
# they are bounded by their deadlines (5 s by default), so this is only a backstop.
RETIRE_TIMEOUT = 120.0
# Parameters of RepositoryModelUnload that tritonclient always sends; the guard has no ensembles,
# so there are no dependents to unload.
UNLOAD_PARAMETERS = {"unload_dependents"}


class ModelControlDisabled(GuardError):
    status = "FAILED_PRECONDITION"


class LoadFailed(GuardError):
    """A model failed to load for a reason other than its config (e.g. ONNX Runtime rejected the file)."""

    status = "INTERNAL"


def fingerprint(directory: Path) -> tuple:
    """What SIGHUP compares: every file under the model directory with its size and modification
    time (nanoseconds). Contents are not hashed: a model file can be large, and a tool that rewrites
    a file changes its mtime."""
    try:
        return tuple(
            sorted(
                (str(p.relative_to(directory)), st.st_size, st.st_mtime_ns)
                for p in directory.rglob("*")
                if p.is_file()
                for st in [p.stat()]
            )
        )
    except OSError:
        return ()


@dataclass
class _Entry:
    fingerprint: tuple = ()
    """Of the directory the serving copy was loaded from (empty when nothing serves)."""
    reason: str = ""
    """Why the last load failed or the model is not served; empty once a load succeeds."""
    failed: bool = False
    """The last load failed (reason says why); an unloaded model has a reason but did not fail."""


class ModelManager:
    def __init__(
        self,
        root: Path,
        models: dict[str, ModelRuntime],
        metrics: GuardMetrics,
        calibration_mode: str | None = None,
        allow_requests: bool = False,
    ):
        """`models` is the data plane's dict of served models, changed in place."""
        self.root = root
        self.models = models
        self.metrics = metrics
        self.calibration_mode = calibration_mode
        self.allow_requests = allow_requests
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task, ModelRuntime] = {}

    # -- startup ---------------------------------------------------------------------------------

    def load_all(self) -> None:
        """Every model of the repository, before the server starts. A mistake in the repository
        (a config, a model file, an artifact) stops the server: nothing serves yet, and it is the
        operator's to fix. What this host's runtime decides (a recalibration that fails, a strict
        refusal: guard.serving.host_calibration.HostBound) fails only that model, which the index
        then lists UNAVAILABLE with the reason; the others serve. If none can, the start fails."""
        failures: list[Exception] = []
        for config in load_repository(self.root):
            stamp = fingerprint(config.directory)
            entry = self._entries[config.name] = _Entry(stamp)
            try:
                self.models[config.name] = self._build(config)
            except HostBound as exc:
                failures.append(exc)
                self._failed(config.name, entry, None, exc)
                continue
            self.metrics.model_loads.labels(config.name, "success").inc()
        if not self.models and failures:
            raise failures[0]

    def unserved(self) -> list[str]:
        """Models of the repository whose last load failed and that have no serving copy."""
        return sorted(name for name in self._entries if self.failure(name) is not None)

    def failure(self, name: str) -> str | None:
        """Why `name` is not served, when its last load failed and no copy serves."""
        entry = self._entries.get(name)
        return entry.reason if entry is not None and entry.failed and name not in self.models else None

    def _build(self, config: ModelConfig) -> ModelRuntime:
        return ModelRuntime(config, self.metrics.for_model(config.name), calibration_mode=self.calibration_mode)

    @staticmethod
    def _read(directory: Path) -> ModelConfig:
        config = load_model_config(directory)
        check_scan_gate(config)
        return config

    # -- loading and unloading -------------------------------------------------------------------

    async def load(self, name: str, why: str) -> None:
        """Load `name` from its directory and serve it in place of the current copy, if any.
        Raises GuardError (ConfigError names file and key) when it fails; nothing changes then."""
        async with self._lock:
            await self._load(name, why)

    async def _load(self, name: str, why: str) -> None:
        directory = self.root / name
        entry = self._entries.setdefault(name, _Entry())
        old = self.models.get(name)
        stamp = fingerprint(directory)  # before reading: a change made during the load is seen next time
        start = time.monotonic()
        runtime = None
        try:
            config = await asyncio.to_thread(self._read, directory)
            runtime = await asyncio.to_thread(self._build, config)
            await runtime.start()
            if not await self._ready(runtime, old):
                raise LoadFailed(
                    f"{directory}: the new copy did not become ready within {READY_TIMEOUT:.0f} s "
                    "(its backend or upstream is not ready)"
                )
        except Exception as exc:  # noqa: BLE001 - any failure leaves the old copy serving, and says why
            if runtime is not None:
                await runtime.close(timeout=0)
                if old is not None:
                    old.publish_metrics()  # the failed copy's start() published its own
            raise self._failed(name, entry, old, exc) from exc
        self.models[name] = runtime  # the swap: from this line on, new requests run on the new copy
        self._forget_series(name, old, runtime)
        entry.fingerprint, entry.reason, entry.failed = stamp, "", False
        self.metrics.model_loads.labels(name, "success").inc()
        log.info(
            "%s: %s version %s from %s in %.2f s (%s)%s",
            name,
            "reloaded" if old else "loaded",
            config.version,
            directory,
            time.monotonic() - start,
            why,
            f"; the replaced copy closes once its {old.active} requests in flight are answered"
            if old is not None and old.active
            else "",
        )
        if old is not None:
            self._retire(old)

    async def _ready(self, runtime: ModelRuntime, old: ModelRuntime | None) -> bool:
        # A copy that is not ready yet may still replace one that is not ready either: nothing is
        # lost, and it serves as soon as its upstream comes up.
        deadline = time.monotonic() + READY_TIMEOUT
        while not runtime.ready:
            if old is None or not old.ready:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _failed(self, name: str, entry: _Entry, old: ModelRuntime | None, exc: Exception) -> GuardError:
        error = (
            exc
            if isinstance(exc, GuardError)
            else LoadFailed(f"{self.root / name}: failed to load: {type(exc).__name__}: {exc}")
        )
        entry.reason, entry.failed = error.message, True
        self.metrics.model_loads.labels(name, "failure").inc()
        log.error(
            "%s: load failed, %s: %s",
            name,
            "the loaded copy keeps serving" if old is not None else "not serving",
            loggable(error.message, 2000, token=False),
        )
        return error

    def _forget_series(self, name: str, old: ModelRuntime | None, new: ModelRuntime | None) -> None:
        """Drop the gauge series only the replaced (or unloaded) copy had: thresholds of detectors
        the new copy no longer has, and its calibration fingerprint if that changed. Otherwise a
        dashboard would go on showing both."""
        if old is None:
            return
        kept = {d.name for d in new.detectors} if new is not None else set()
        for detector in old.detectors:
            if detector.name not in kept:
                with contextlib.suppress(KeyError):  # never set: the copy never started
                    self.metrics.detector_threshold.remove(name, detector.name)
        labels = (old.host_calibration.fingerprint, old.host_calibration.recalibrated)
        if new is None or labels != (new.host_calibration.fingerprint, new.host_calibration.recalibrated):
            with contextlib.suppress(KeyError):
                self.metrics.calibration_info.remove(name, *labels)

    async def unload(self, name: str, why: str) -> bool:
        """Stop routing requests to `name`; its copy closes once they are answered. False when it
        was not served."""
        async with self._lock:
            return self._unload(name, why)

    def _unload(self, name: str, why: str) -> bool:
        old = self.models.pop(name, None)
        if old is None:
            return False
        entry = self._entries.setdefault(name, _Entry())
        entry.fingerprint, entry.reason, entry.failed = (), "unloaded", False
        self._forget_series(name, old, None)
        log.info(
            "%s: unloaded (%s)%s", name, why, f"; {old.active} requests in flight finish first" if old.active else ""
        )
        self._retire(old)
        return True

    def _retire(self, old: ModelRuntime) -> None:
        task = asyncio.create_task(self._close_when_idle(old), name=f"retire-{old.config.name}")
        self._retiring[task] = old
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task) -> None:
        self._retiring.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing a replaced model copy failed: %s", task.exception())

    @staticmethod
    async def _close_when_idle(old: ModelRuntime) -> None:
        if not await old.wait_idle(RETIRE_TIMEOUT):
            log.warning(
                "%s: %d requests still on the replaced copy after %.0f s; failing them",
                old.config.name,
                old.active,
                RETIRE_TIMEOUT,
            )
        await old.close(timeout=0)

    # -- SIGHUP ----------------------------------------------------------------------------------

    async def reload_changed(self) -> dict[str, str]:
        """Re-read the repository: reload changed models, load new ones, unload removed ones. Each
        model on its own: one that fails keeps its old copy and the others still change. Returns
        what happened per model (for the log and tests)."""
        async with self._lock:
            try:
                on_disk = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            except OSError as exc:
                log.error("SIGHUP: cannot read the repository %s (%s); nothing changed", self.root, exc)
                return {}
            outcome: dict[str, str] = {}
            for name in sorted(on_disk | set(self.models)):
                if name not in on_disk:
                    self._unload(name, "its directory is gone")
                    outcome[name] = "unloaded"
                elif name in self.models and fingerprint(self.root / name) == self._entries[name].fingerprint:
                    outcome[name] = "unchanged"
                else:
                    try:
                        await self._load(name, "SIGHUP")
                        outcome[name] = "loaded"
                    except GuardError as exc:
                        outcome[name] = f"failed: {exc.message}"
            log.info(
                "SIGHUP: repository %s re-read: %s",
                self.root,
                ", ".join(f"{n} {o.split(':')[0]}" for n, o in outcome.items()) or "no models",
            )
            return outcome

    # -- the repository RPCs ---------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model directory and every served model."""
        try:
            names = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        except OSError:
            names = set()
        rows = []
        for name in sorted(names | set(self.models) | set(self._entries)):
            runtime = self.models.get(name)
            reason = self._entries[name].reason if name in self._entries else ""
            if runtime is not None:
                row = (name, runtime.config.version, READY if runtime.ready else UNAVAILABLE, reason)
            else:
                row = (name, "", UNAVAILABLE if name in self._entries else "", reason)
            if not ready_only or row[2] == READY:
                rows.append(row)
        return rows

    def _requested_name(self, name: str) -> str:
        """A model name from a client, checked before it touches the file system: one directory
        directly under the repository, nothing else (no separators, no `..`, no hidden entries)."""
        if not self.allow_requests:
            raise ModelControlDisabled(
                "model control is off: start `guard serve --model-control` to load and "
                "unload models over gRPC (SIGHUP re-reads the repository)"
            )
        if (
            not name
            or len(name) > 255
            or name.startswith(".")
            or any(c in name for c in "/\\\0")
            or not name.isprintable()
        ):
            raise InvalidInput(f"model name {loggable(name)}: expected the name of a directory in the repository")
        return name

    async def load_requested(self, name: str, parameters: dict[str, object]) -> None:
        name = self._requested_name(name)
        if parameters:
            raise InvalidInput(
                f"parameters {sorted(loggable(k) for k in parameters)} are not supported: the guard "
                "loads a model only from its directory in the repository"
            )
        if not (self.root / name).is_dir():
            raise ModelNotFound(f"no model directory '{name}' in the repository")
        await self.load(name, "RepositoryModelLoad")

    async def unload_requested(self, name: str, parameters: dict[str, object]) -> None:
        name = self._requested_name(name)
        unknown = set(parameters) - UNLOAD_PARAMETERS
        if unknown:
            raise InvalidInput(f"parameters {sorted(loggable(k) for k in unknown)} are not supported")
        if name not in self.models and name not in self._entries:
            raise ModelNotFound(f"unknown model '{name}'")
        await self.unload(name, "RepositoryModelUnload")

    # -- shutdown --------------------------------------------------------------------------------

    @property
    def retiring(self) -> list[ModelRuntime]:
        """Replaced copies still answering their last requests."""
        return list(self._retiring.values())

    async def close(self, timeout: float | None = None) -> None:
        """Wait for replaced copies to close, at most `timeout` seconds; then fail what they still hold."""
        tasks = list(self._retiring)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            self._retiring[task].batcher.abort()
        if pending:
            await asyncio.wait(pending)
