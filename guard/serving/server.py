"""The gateway process: loads the repository, then serves gRPC (v2 inference, health, reflection,
the repository RPCs) and /metrics on its own port, until a graceful stop.

A stop (SIGTERM, SIGINT) answers every request a client already sent, in four steps:
1. Health goes NOT_SERVING on every service name ("", the inference service, each model) and
   ServerReady/ModelReady turn false, while requests are still served...
2. ...for the drain period (`--drain-seconds`), so that load balancers, Kubernetes endpoints and
   clients that watch health stop sending here before anything is refused.
3. New requests are parked until no more arrive, then gRPC stops accepting calls (GOAWAY) and the
   parked ones fail with UNAVAILABLE: a client retries those elsewhere. (Stopping gRPC while calls
   keep arriving would make gRPC itself cancel the ones it had not yet handed over: CANCELLED, which
   a client cannot tell from its own cancellation. See DataPlane.stop_accepting.)
4. In-flight and queued requests finish. What is still waiting at the exit timeout
   (`--exit-timeout-seconds`, counted from the signal, drain included) fails with UNAVAILABLE, and
   the process exits. A second SIGTERM or SIGINT skips to that end at once.
SIGHUP re-reads the repository (guard.serving.reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from guard.detection.baselines import Baselines
from guard.protocol.proto import inference_pb2 as pb
from guard.serving.auth import Authenticator
from guard.serving.dataplane import EXTENSIONS, DataPlane
from guard.serving.grants import ExplainGrants
from guard.serving.metrics import GuardMetrics
from guard.serving.quarantine.writer import QuarantineWriter
from guard.serving.query_watch import QueryWatches
from guard.serving.quotas import QuotaBook
from guard.serving.reload import ModelManager
from guard.serving.runtime import ModelRuntime
from guard.serving.settings import ServerSettings
from guard.serving.shared_memory import SYSTEM_SHARED_MEMORY, SharedMemoryRegistry
from guard.serving.tokens import load_tokens
from guard.serving.transport.callers import Callers
from guard.serving.transport.faults import FaultLog
from guard.serving.transport.service import add_inference_service
from guard.serving.transport.servicer import InferenceServicer
from guard.serving.transport.tls import certificate_files, server_credentials

__all__ = ["GuardServer", "ServerSettings", "serve_forever"]

log = logging.getLogger("guard.serving.server")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Step 3 of a stop: gRPC stops accepting once no request has arrived for QUIET seconds (every
# client that kept sending is then parked), or after QUIET_LIMIT seconds with clients that send
# regardless of answers (open loop); the latter may see CANCELLED for calls caught in between.
QUIET = 0.2
QUIET_LIMIT = 2.0
# Step 4: once no request waits, calls still open are streams and health watches with nothing in
# flight; they are cancelled after SETTLE seconds rather than held until the exit timeout.
SETTLE = 0.1
# At the exit timeout, what still waits fails with UNAVAILABLE; this long later, gRPC cancels
# whatever call is left.
ABORT_GRACE = 1.0


@dataclass
class _Serving:
    """What start() brings up and shutdown() takes down: there from the moment gRPC is set up, so
    that a start that fails half-way is still stopped in full."""

    grpc: grpc.aio.Server
    health: health.aio.HealthServicer
    faults: FaultLog
    """The transport's failure counts: their last summary is written on stop."""
    http: WSGIServer | None = None
    """The /metrics endpoint; None while it is not up, or when it is disabled."""
    health_follower: asyncio.Task[None] | None = None
    quarantine: QuarantineWriter | None = None
    """The quarantine's writer thread and store; None when off."""


class GuardServer:
    def __init__(self, settings: ServerSettings, metrics: GuardMetrics | None = None):
        s = self.settings = settings
        # Files named by flags are read first: a bad one fails before any model loads (SettingsError).
        self.tls = certificate_files(s.tls_cert, s.tls_key, s.tls_client_ca)
        authenticator = Authenticator(load_tokens(s.auth_tokens, s.auth_tokens_text), s.tls_client_ca is not None)
        self.callers = Callers(authenticator)
        self.metrics = metrics or GuardMetrics(publish_thresholds=s.publish_thresholds)
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._runtimes: dict[str, ModelRuntime] = {}
        """Served models by name: the same dict as dataplane.models, which a reload changes."""
        self.models = ModelManager(s.repository, self._runtimes, self.metrics, s.calibration, s.model_control)
        self.dataplane = DataPlane(self._runtimes, s.policy)
        self.dataplane.control = self.models
        self.dataplane.explain = ExplainGrants.resolve(s.explain_identities, authenticator.required)
        self.dataplane.quotas = QuotaBook(s.client_limits)
        self.dataplane.query_watch = QueryWatches(self.metrics.client_flagged, s.query_attack, s.query_store)
        self.shared_memory = SharedMemoryRegistry(max_tensor_bytes=s.max_message_bytes) if s.shared_memory else None
        self.dataplane.extensions = EXTENSIONS + ((SYSTEM_SHARED_MEMORY,) if s.shared_memory else ())
        self._serving: _Serving | None = None
        """Set by start(); None before it and once stopped."""
        self._reloads: set[asyncio.Task[dict[str, str]]] = set()

    async def start(self) -> None:
        s = self.settings
        torch.set_num_threads(s.torch_threads)
        self.models.load_all()

        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            # Calls gRPC has received but the event loop has not yet taken (it takes one per
            # turn): past 1000 by default gRPC itself cancels them, a bare CANCELLED the client
            # cannot tell from its own. Sized from the concurrency limit, so that the gateway's
            # own refusal (RESOURCE_EXHAUSTED with a retry hint) answers them instead.
            ("grpc.server.max_pending_requests", 4 * s.max_concurrency),
            ("grpc.server.max_pending_requests_hard_limit", 8 * s.max_concurrency),
        ]
        server = grpc.aio.server(options=options)
        servicer = InferenceServicer(
            self.dataplane,
            max_concurrency=s.max_concurrency,
            shared_memory=self.shared_memory,
            callers=self.callers,
        )
        add_inference_service(servicer, server)
        serving = self._serving = _Serving(server, health.aio.HealthServicer(), servicer.faults)
        if s.quarantine is not None:
            serving.quarantine = QuarantineWriter(s.quarantine, self.metrics, models=list(self._runtimes))
            self.dataplane.quarantine = serving.quarantine
        # Health answers without credentials (over TLS when it is on): probes carry no tokens.
        health_pb2_grpc.add_HealthServicer_to_server(serving.health, server)
        if s.reflection:
            # The messages live in a private descriptor pool (proto/generate.py): reflection reads that one.
            reflection.enable_server_reflection(
                [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server, pool=pb.DESCRIPTOR.pool
            )
        address = f"{s.host}:{s.grpc_port}"
        if self.tls is not None:
            self.grpc_port = server.add_secure_port(address, server_credentials(self.tls))
        else:
            self.grpc_port = server.add_insecure_port(address)
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {s.host}:{s.grpc_port}")
        for runtime in self._runtimes.values():
            await runtime.start()
        await server.start()
        if s.metrics_port >= 0:
            serving.http, _ = self.metrics.serve(s.metrics_host, s.metrics_port)
            self.metrics_port = serving.http.server_port
        await self._follow_readiness(serving.health, once=True)
        serving.health_follower = asyncio.create_task(self._follow_readiness(serving.health), name="health")
        auth = self.callers.authenticator
        if auth.tokens is not None and self.tls is None:
            log.warning("bearer tokens over plaintext gRPC: anyone on the path reads them (add --tls-cert/--tls-key)")
        log.info(
            "guard ready: grpc=%s:%d metrics=%s policy=%s tls=%s auth=%s models=%s",
            s.host,
            self.grpc_port,
            f"{s.metrics_host}:{self.metrics_port}" if self.metrics_port else "off",
            s.policy or "per-model",
            "off" if self.tls is None else "mutual" if s.tls_client_ca is not None else "on",
            "tokens" if auth.tokens is not None else "client-certificates" if auth.mutual_tls else "off",
            ",".join(self._runtimes),
        )

    def baselines(self, model: str) -> Baselines | None:
        """The model's per-camera baselines (None without [cameras.baseline], or no such model): an
        evaluation that starts the server drives their clock (guard.tools.evaluation.baseline_clock)."""
        runtime = self._runtimes.get(model)
        return None if runtime is None else runtime.baselines

    def reload(self) -> asyncio.Task[dict[str, str]] | None:
        """Re-read the repository in the background (SIGHUP); None once stopping."""
        if self._serving is None or self.dataplane.draining:
            return None
        task = asyncio.create_task(self.models.reload_changed(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        return task

    async def stop(self, grace: float = 2.0) -> None:
        """Stop without a drain period: `grace` seconds for what is in flight (tests and tools, whose
        clients know the server is going away)."""
        await self.shutdown(drain_seconds=0.0, exit_timeout=grace)

    async def shutdown(
        self, drain_seconds: float | None = None, exit_timeout: float | None = None, force: asyncio.Event | None = None
    ) -> None:
        """The graceful stop of the module docstring; `force` set (a second signal) ends it at once.
        Defaults from the settings."""
        serving = self._serving
        if serving is None:
            return
        s = self.settings
        timeout = s.exit_timeout_seconds if exit_timeout is None else exit_timeout
        drain = min(s.drain_seconds if drain_seconds is None else drain_seconds, timeout)
        force = force or asyncio.Event()
        start = time.monotonic()
        deadline = start + timeout
        served = self._requests_total()

        # 1. Not serving, while still serving.
        self.dataplane.draining = True
        for task in self._reloads:
            task.cancel()
        if serving.health_follower is not None:
            serving.health_follower.cancel()
            await asyncio.gather(serving.health_follower, return_exceptions=True)
        for name in ["", SERVICE, *self._runtimes]:
            await serving.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await serving.health.enter_graceful_shutdown()
        if drain > 0:
            log.info(
                "stopping: health NOT_SERVING; serving new requests for %.1f s more (exit timeout %.1f s)",
                drain,
                timeout,
            )
        # 2. The drain period.
        await _until(start + drain, force)
        # 3. Stop accepting: park new requests until none arrive, then GOAWAY, then answer them.
        self.dataplane.stop_accepting()
        quiet_by = min(time.monotonic() + QUIET_LIMIT, deadline)
        while not force.is_set() and time.monotonic() < quiet_by:
            quiet_at = self.dataplane.last_arrival + QUIET  # moves while requests keep arriving
            if time.monotonic() >= quiet_at:
                break
            await _until(min(quiet_at, quiet_by), force)
        stopping = asyncio.create_task(serving.grpc.stop(max(0.0, deadline - time.monotonic()) + ABORT_GRACE))
        await asyncio.sleep(0)  # the task has run up to its first await: gRPC's shutdown has begun
        self.dataplane.release_refused()
        log.info(
            "no longer accepting calls; %d requests in flight, %d refused", self.dataplane.active, self.dataplane.parked
        )
        # 4. Let what is inside finish.
        settled_at = None
        while not stopping.done() and not force.is_set() and time.monotonic() < deadline:
            if self._idle():
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= SETTLE:
                    break
            else:
                settled_at = None
            await asyncio.wait([stopping], timeout=0.01)
        aborted = 0
        if not stopping.done():
            if not self._idle():
                aborted = self._abort(
                    "forced by a second signal" if force.is_set() else f"the exit timeout ({timeout:.0f} s) passed"
                )
                # A moment for the failed requests' answers to go out before gRPC cancels the rest.
                await _poll(lambda: self.dataplane.active == 0, 0.1 if force.is_set() else ABORT_GRACE)
            await serving.grpc.stop(None)  # cancels what is left: streams, health watches, stuck batches
        await stopping
        if self.shared_memory is not None:
            self.shared_memory.close()
        await self.models.close(timeout=0)
        for runtime in list(self._runtimes.values()):
            await runtime.close(timeout=0)
        # Every request is answered: the failures counted since the last summary reach the log now
        # (their timers would never fire once the loop stops).
        serving.faults.close()
        self.dataplane.flush_logs()
        if serving.quarantine is not None:  # every request is answered: write what is buffered
            await asyncio.to_thread(serving.quarantine.close)
        await self.dataplane.query_watch.close()
        if serving.http is not None:
            await asyncio.to_thread(serving.http.shutdown)  # waits out its poll interval (0.5 s): not on the loop
            serving.http.server_close()
        self._serving = None
        log.info(
            "stopped after %.2f s: %d requests answered since the signal%s",
            time.monotonic() - start,
            self._requests_total() - served,
            f", {aborted} failed UNAVAILABLE unfinished" if aborted else "",
        )

    def _idle(self) -> bool:
        """No request is inside the gateway: none parked, routed, queued or in a running batch."""
        return self.dataplane.active == 0 and self.dataplane.parked == 0

    def _abort(self, why: str) -> int:
        log.warning("stopping now (%s): failing what still waits with UNAVAILABLE", why)
        failed = sum(
            runtime.batcher.abort(f"server is shutting down: {why}")
            for runtime in [*self._runtimes.values(), *self.models.retiring]
        )
        self.dataplane.release_refused()
        return failed

    def _requests_total(self) -> float:
        return sum(
            sample.value
            for family in self.metrics.requests.collect()
            for sample in family.samples
            if sample.name == "guard_requests_total"
        )

    async def _follow_readiness(
        self, servicer: health.aio.HealthServicer, once: bool = False, period: float = 0.1
    ) -> None:
        """gRPC health follows readiness, since a remote backend's upstream can come and go: each
        model's name its own, the inference service's name every model's (like ServerReady). The
        server's "" stays SERVING until shutdown: liveness probes ask it, and restarting the guard
        would not bring an upstream back. A model that a reload removed reports NOT_SERVING."""
        reported: dict[str, bool] = {}
        while True:
            states = {name: runtime.ready for name, runtime in self._runtimes.items()}
            states[SERVICE] = all(states.values())
            for name in self.models.unserved():  # failed to load: NOT_SERVING, not an unknown name
                states[name] = False
            states[""] = True
            for name in reported:
                states.setdefault(name, False)
            for name, ready in states.items():
                if reported.get(name) != ready:
                    await servicer.set(
                        name,
                        health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING,
                    )
            reported = states
            if once:
                return
            await asyncio.sleep(period)

    async def wait(self) -> None:
        if self._serving is not None:
            await self._serving.grpc.wait_for_termination()


async def _until(when: float, force: asyncio.Event) -> None:
    """Wait until time.monotonic() reaches `when` or `force` is set."""
    remaining = when - time.monotonic()
    if remaining > 0 and not force.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(force.wait(), remaining)


async def _poll(condition: Callable[[], bool], timeout: float, period: float = 0.005) -> bool:
    """Wait until `condition()` holds, at most `timeout` seconds; returns whether it held."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(period)
    return True


async def serve_forever(settings: ServerSettings) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully (a second one: at once); SIGHUP re-reads the
    repository."""
    import signal

    server = GuardServer(settings)
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: stopping now", sig.name)
            force.set()
        else:
            log.info(
                "%s: stopping gracefully (drain %.1f s, exit timeout %.1f s; send it again to stop now)",
                sig.name,
                settings.drain_seconds,
                settings.exit_timeout_seconds,
            )
            stop.set()

    # Before start(): its "guard ready" line tells supervisors and tests they may signal now.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start()
    await stop.wait()
    await server.shutdown(force=force)
