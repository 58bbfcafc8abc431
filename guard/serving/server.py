"""The gateway process: loads the repository, then serves gRPC (v2 inference, health, reflection)
and /metrics on its own port."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from guard.protocol.limits import MAX_MESSAGE_BYTES
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from guard.serving.dataplane import DataPlane
from guard.serving.metrics import GuardMetrics
from guard.serving.repository import load_repository
from guard.serving.runtime import ModelRuntime
from guard.serving.transport.servicer import InferenceServicer

log = logging.getLogger("guard.serving.server")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass(frozen=True)
class ServerSettings:
    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    """0 picks a free port (see GuardServer.grpc_port once started)."""
    metrics_port: int = 8002
    """0 picks a free port; -1 disables the metrics endpoint."""
    policy: str | None = None
    """Overrides every model's configured policy when set."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Larger requests fail with RESOURCE_EXHAUSTED before they are decoded."""
    torch_threads: int = 1
    """Threads for the guard's own tensor work; the backend has its own (intra_op_threads)."""
    calibration: str | None = None
    """Overrides every model's [calibration] mode: recalibrate, strict or trust."""


class GuardServer:
    def __init__(self, settings: ServerSettings, metrics: GuardMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or GuardMetrics()
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http = None
        self._runtimes: dict[str, ModelRuntime] = {}
        self._health_follower: asyncio.Task | None = None

    async def start(self) -> None:
        s = self.settings
        torch.set_num_threads(s.torch_threads)
        for config in load_repository(s.repository):
            self._runtimes[config.name] = ModelRuntime(config, self.metrics.for_model(config.name),
                                                       calibration_mode=s.calibration)
        self.dataplane = DataPlane(self._runtimes, s.policy)

        options = [("grpc.max_receive_message_length", s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes)]
        self._grpc = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.dataplane), self._grpc)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self._grpc, pool=pb.POOL)
        self.grpc_port = self._grpc.add_insecure_port(f"{s.host}:{s.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {s.host}:{s.grpc_port}")
        for runtime in self._runtimes.values():
            await runtime.start()
        await self._grpc.start()
        if s.metrics_port >= 0:
            self._http, _ = self.metrics.serve(s.host, s.metrics_port)
            self.metrics_port = self._http.server_port
        await self._follow_readiness(once=True)
        self._health_follower = asyncio.create_task(self._follow_readiness(), name="health")
        log.info("guard ready: grpc=%s:%d metrics=%s policy=%s models=%s", s.host, self.grpc_port,
                 f"{s.host}:{self.metrics_port}" if self.metrics_port else "off", s.policy or "per-model",
                 ",".join(self._runtimes))

    async def stop(self, grace: float = 2.0) -> None:
        if self._grpc is None:
            return
        if self._health_follower is not None:
            self._health_follower.cancel()
            await asyncio.gather(self._health_follower, return_exceptions=True)
        await self._health.enter_graceful_shutdown()
        await self._grpc.stop(grace)
        for runtime in self._runtimes.values():
            await runtime.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self._grpc = None

    async def _follow_readiness(self, once: bool = False, period: float = 0.1) -> None:
        """gRPC health follows readiness, since a remote backend's upstream can come and go: each
        model's name its own, the inference service's name every model's (like ServerReady). The
        server's "" stays SERVING until shutdown: liveness probes ask it, and restarting the guard
        would not bring an upstream back."""
        reported: dict[str, bool] = {}
        while True:
            states = {name: runtime.ready for name, runtime in self._runtimes.items()}
            states[SERVICE] = all(states.values())
            states[""] = True
            for name, ready in states.items():
                if reported.get(name) != ready:
                    await self._health.set(name, health_pb2.HealthCheckResponse.SERVING if ready
                                           else health_pb2.HealthCheckResponse.NOT_SERVING)
            reported = states
            if once:
                return
            await asyncio.sleep(period)

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


async def serve_forever(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight requests and stop."""
    import signal

    server = GuardServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
