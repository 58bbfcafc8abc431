"""A KServe v2 gRPC upstream as the backend: Triton, MLServer, KServe or another guard runs the model.

`infer` runs on the model's executor thread, so a blocking gRPC channel serves it. Faults:
- the upstream's metadata is read and checked against the config at load; a mismatch fails the
  load (or, when the upstream was down then, keeps the model not ready with the reason);
- each call carries the request's remaining deadline (capped by `timeout_s`) as its grpc-timeout;
- a call that failed to connect was never sent, so it is retried (`connect_retries`); a call that
  may have run is never retried;
- connection failures feed a circuit breaker: while it is open calls fail at once;
- a watcher thread probes ModelReady, drives readiness and closes the breaker as soon as the
  upstream answers again.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import numpy as np

from guard.backends.base import Backend
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.backends.remote.circuit import HALF_OPEN, OPEN, CircuitBreaker
from guard.backends.remote.layout import Layout, check_metadata, cut, decode_checked
from guard.backends.remote.settings import RemoteSettings, read_remote_settings
from guard.protocol.codec import encode_request
from guard.protocol.errors import BackendError, ConfigError, DeadlineExceeded, GuardError
from guard.protocol.limits import MAX_MESSAGE_BYTES
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from guard.protocol.settings import TableReader
from guard.protocol.spec import ModelSpec, TensorSpec
from guard.protocol.tensors import rows_of

log = logging.getLogger("guard.backends")

# Details gRPC gives when no connection could be made: the call never left this process.
_NOT_SENT = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "connection refused",
    "errors resolving",
    "dns resolution failed",
    "no route to host",
)
# Reconnect quickly once the upstream is back (gRPC's default backoff grows to two minutes), and
# spread calls over every address a target resolves to (a headless Service's pods).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.lb_policy_name", "round_robin"),
]


class UpstreamError(GuardError):
    """The upstream answered with an error of its own; the client gets the upstream's status."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def _raiser(error: Exception):
    def outcome():
        raise error

    return outcome


def _never_sent(error: grpc.RpcError) -> bool:
    return error.code() == grpc.StatusCode.UNAVAILABLE and any(
        text in (error.details() or "").lower() for text in _NOT_SENT
    )


class RemoteBackend(Backend):
    kind = "remote"
    keys = ()  # read_remote_settings checks its own keys, which depend on the mode
    waits_on_network = True

    @classmethod
    def read_settings(cls, reader: TableReader, model_name: str) -> RemoteSettings:
        return read_remote_settings(reader, model_name)

    @classmethod
    def create(cls, spec: ModelSpec, settings: RemoteSettings, feature_readers: tuple[str, ...] = ()) -> Backend:
        """through: this backend runs originals and variants upstream. forward_clean: the local
        ONNX Runtime copy runs the check and forwards what passed here."""
        if settings.mode == "through":
            return cls(spec, settings, feature_readers)
        local = OnnxRuntimeBackend(spec, settings.local, feature_readers)
        local.forward_to = cls(spec, settings)
        return local

    @staticmethod
    def model_files(settings: RemoteSettings) -> tuple:
        return (settings.local.model_file,) if settings.local else ()

    def __init__(self, spec: ModelSpec, settings: RemoteSettings, feature_readers: tuple[str, ...] = ()):
        super().__init__(spec, settings, feature_readers)
        self.remote = settings
        self.where = f"upstream model '{settings.model}' at {settings.target}"
        self.layout: Layout | None = None
        self.problem = "not contacted yet"
        self.circuit = CircuitBreaker(settings.circuit_failures, settings.circuit_reset_s)
        self._healthy = False
        self._watcher: threading.Thread | None = None

    def load(self) -> None:
        self._channel = self._open_channel()
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            self._probe(min(self.remote.timeout_s, 2.0))
        except ConfigError:
            self._channel.close()
            raise  # the upstream answered and disagrees with the config: fail the load
        if not self._healthy:
            log.warning("%s not ready at load (%s); serving UNAVAILABLE until it is", self.where, self.problem)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"guard-upstream-{self.spec.name}", daemon=True)
        self._watcher.start()

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        return None  # checked against the upstream's metadata by check_metadata, whenever it is read

    # -- Backend interface -------------------------------------------------------------------

    @property
    def description(self) -> str:
        return f"remote:{self.remote.target}/{self.remote.model}"

    @property
    def ready(self) -> bool:
        return self._healthy

    def close(self) -> None:
        if self._watcher is not None:
            self._stop.set()
            self._watcher.join(5)
            self._channel.close()

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        layout = self.layout
        if layout is None:  # never reached, or its metadata disagrees with the config
            raise BackendError(f"{self.where} unavailable: {self.problem}")
        if not self.circuit.allow():
            raise BackendError(
                f"{self.where} unavailable ({self.problem}); circuit open, next probe in "
                f"{self.circuit.retry_in() * 1e3:.0f} ms"
            )
        rows = rows_of(inputs)
        chunks = cut(inputs, rows, layout)
        requests = {
            i: encode_request(self.remote.model, self.remote.version, chunk, outputs)
            for i, (chunk, _) in enumerate(chunks)
        }
        answers = self._send(requests, deadline)
        parts = [decode_checked(self.where, answers[i], outputs, size, layout) for i, (_, size) in enumerate(chunks)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in outputs}

    # -- calls -------------------------------------------------------------------------------

    def _timeout(self, deadline: float | None) -> float:
        """The request's remaining time (not its original timeout), capped by timeout_s."""
        if deadline is None:
            return self.remote.timeout_s
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before the call to {self.where}")
        return min(self.remote.timeout_s, remaining)

    def _send(
        self, requests: dict[int, pb.ModelInferRequest], deadline: float | None
    ) -> dict[int, pb.ModelInferResponse]:
        """All chunks at once; only chunks that failed to connect are sent again."""
        answers: dict[int, pb.ModelInferResponse] = {}
        pending, attempt = dict(requests), 0
        while True:
            timeout = self._timeout(deadline)
            unsent: dict[int, pb.ModelInferRequest] = {}
            failure: grpc.RpcError | BackendError | None = None
            for i, outcome in self._call_all(pending, timeout):
                try:
                    answers[i] = outcome()
                except grpc.RpcError as exc:
                    if _never_sent(exc):
                        unsent[i] = pending[i]
                    if failure is None or not _never_sent(exc):
                        failure = exc  # report a call that may have run over one that never left
                except grpc.FutureCancelledError:
                    failure = failure or BackendError(f"call to {self.where} was cancelled")
            if failure is None:
                self.circuit.success()
                return answers
            if isinstance(failure, grpc.RpcError) and _never_sent(failure):  # none of the failed calls left
                self._connection_failed(failure)
                if attempt < self.remote.connect_retries and self.circuit.allow():
                    attempt += 1
                    time.sleep(min(0.05, max(0.0, self._timeout(deadline) / 2)))
                    pending = unsent
                    continue
            raise self._error(failure, timeout)

    def _call_all(self, pending: dict[int, pb.ModelInferRequest], timeout: float):
        """(chunk, a callable giving its answer or raising its error) for every chunk in flight at once."""
        if len(pending) == 1:  # the common case: a blocking call, no future's thread hand-off
            ((i, request),) = pending.items()
            try:
                answer = self._stub.ModelInfer(request, timeout=timeout)
            except grpc.RpcError as exc:
                return [(i, _raiser(exc))]
            return [(i, lambda: answer)]
        futures = {i: self._stub.ModelInfer.future(r, timeout=timeout) for i, r in pending.items()}
        return [(i, future.result) for i, future in futures.items()]

    def _connection_failed(self, error: grpc.RpcError) -> None:
        self.problem = f"unreachable: {error.details()}"
        self.circuit.failure()
        self._mark_down_if_open(error.details())

    def _mark_down_if_open(self, why: str | None) -> None:
        if self.circuit.state == OPEN and self._healthy:
            self._healthy = False  # readiness follows at once; the watcher confirms recovery
            log.warning("%s down: %s", self.where, why)

    def _error(self, failure: grpc.RpcError | GuardError, timeout: float) -> GuardError:
        if isinstance(failure, GuardError):
            return failure
        code, details = failure.code(), failure.details()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # No answer within the upstream's own limit (timeout_s) counts against it like a
            # refused connection: a hung or blackholed upstream would otherwise hold every request
            # for timeout_s. A request's own short deadline says nothing about the upstream.
            if self.circuit.state == HALF_OPEN or timeout >= self.remote.timeout_s:
                self.problem = f"no answer within {timeout * 1e3:.0f} ms"
                self.circuit.failure()
                self._mark_down_if_open(self.problem)
            return DeadlineExceeded(f"{self.where} did not answer within {timeout * 1e3:.0f} ms")
        if code == grpc.StatusCode.UNAVAILABLE:
            if _never_sent(failure):
                return BackendError(f"{self.where} unreachable: {details}")
            self._connection_failed(failure)
            return BackendError(f"{self.where} failed during the call (not retried: it may have run): {details}")
        if code == grpc.StatusCode.CANCELLED:
            return BackendError(f"call to {self.where} was cancelled: {details}")
        self.circuit.success()  # it answered: the connection is fine
        return UpstreamError(code.name, f"{self.where} answered {code.name}: {details}")

    # -- metadata, readiness -----------------------------------------------------------------

    def _watch(self) -> None:
        interval = self.remote.health_interval_s
        while not self._stop.wait(interval if self._healthy else interval / 3):
            try:
                self._probe(min(interval, 1.0))
            except ConfigError as exc:
                if self.problem != exc.message:
                    log.error("%s disagrees with the config: %s", self.where, exc.message)
                self.problem, self.layout, self._healthy = exc.message, None, False
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("probing %s failed", self.where)

    def _probe(self, timeout: float) -> None:
        """Checks the upstream; reads (and checks) its metadata whenever it was not healthy, so an
        upstream that comes back with another model is caught. Raises ConfigError on mismatch."""
        was = self._healthy
        try:
            if not was:
                metadata = self._stub.ModelMetadata(
                    pb.ModelMetadataRequest(name=self.remote.model, version=self.remote.version), timeout=timeout
                )
                self.layout = check_metadata(
                    self.spec, metadata, self.where, self.remote.max_batch, self.feature_readers
                )
            ready = self._stub.ModelReady(
                pb.ModelReadyRequest(name=self.remote.model, version=self.remote.version), timeout=timeout
            ).ready
            self.problem = "ok" if ready else "the upstream reports the model not ready"
        except grpc.RpcError as exc:
            ready = False
            self.problem = f"{exc.code().name}: {exc.details()}"
            # Unreachable, or reachable but silent (a hung process, a blackholed route): requests
            # fail at once instead of each finding out.
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.circuit.trip()
        if ready:
            self.circuit.close()
        self._healthy = ready
        if ready != was:
            log.log(
                logging.INFO if ready else logging.WARNING,
                "%s %s",
                self.where,
                "ready" if ready else f"not ready: {self.problem}",
            )

    def _open_channel(self) -> grpc.Channel:
        options = [
            *_CHANNEL_OPTIONS,
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        tls = self.remote.tls
        if tls is None:
            return grpc.insecure_channel(self.remote.target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes() if tls.ca else None,
            private_key=tls.key.read_bytes() if tls.key else None,
            certificate_chain=tls.cert.read_bytes() if tls.cert else None,
        )
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.secure_channel(self.remote.target, credentials, options=options)
