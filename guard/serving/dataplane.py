"""The data plane: routing, validation, deadlines, policy and responses. It knows no transport.

It also keeps the books a graceful stop and a model reload need: how many requests are inside,
when the last one arrived, and which copy of a model each one runs on (`ModelRuntime.enter`), so
that a replaced copy closes only once its own requests are answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from guard import __version__
from guard.protocol.errors import GuardError, ModelNotFound, ModelUnavailable, QueueFull
from guard.protocol.types import InferRequest, InferResponse, Verdict
from guard.serving import policy
from guard.serving.camera_alerts import observe_camera
from guard.serving.camera_owners import CameraOwners
from guard.serving.cameras import ALERT as CAMERA_ALERT
from guard.serving.cameras import camera_of
from guard.serving.deadlines import cancelled_status, effective_deadline
from guard.serving.grants import ExplainGrants
from guard.serving.logs import FailureLog, loggable, loggable_id
from guard.serving.quarantine.hook import quarantine_verdict
from guard.serving.quarantine.writer import QuarantineWriter
from guard.serving.query_watch import CLIENT_VERDICT, QueryWatches
from guard.serving.quotas import Lease, QuotaBook
from guard.serving.reload import ModelManager
from guard.serving.runtime import ModelRuntime, RowsResult
from guard.serving.validation import EncodedInputs, validate

log = logging.getLogger("guard.serving.dataplane")
access = logging.getLogger("guard.access")

SERVER_NAME = "guard"
# A request parameter asking for every detector's raw score (evaluation, debugging); the answer
# is a JSON object in the response parameter DETECTOR_SCORES. Never under policy shadow.
EXPLAIN = "guard_explain"
DETECTOR_SCORES = "guard_detector_scores"
SUSPECTS = "guard_suspects"
"""Text models, with guard_explain: a JSON object, detector -> per row the words it blames."""
EXTENSIONS = ("guard_verdict", "model_configuration", "statistics")
"""What ServerMetadata lists: the verdict parameters, and Triton's configuration and statistics
extensions (perf_analyzer asks for statistics only from a server that lists them)."""


@dataclass(slots=True)
class _Call:
    """One request's books while it is served: what its metrics and access line say at the end."""

    request: InferRequest
    start: float
    runtime: ModelRuntime | None = None
    """The model its metrics go to, once known (while refusing, even one that will not serve it)."""
    entered: ModelRuntime | None = None
    """The copy it is counted on, once it is."""
    verdict: str = "none"
    code: str = "OK"
    lease: Lease | None = None
    """Its place in its client's quota (guard.serving.quotas), once admitted; None: no quota."""


class DataPlane:
    def __init__(self, models: dict[str, ModelRuntime], policy_override: str | None = None):
        self.models = models
        """Served models by name; a reload replaces an entry (guard.serving.reload)."""
        self.policy_override = policy_override
        self.control: ModelManager | None = None
        """The repository's ModelManager (guard.serving.reload), for the repository RPCs."""
        self.draining = False
        """Set when shutdown begins: readiness turns false, requests are still served."""
        self.active = 0
        """Requests inside `infer` that are being served (not parked)."""
        self.parked = 0
        self.last_arrival = 0.0
        """time.monotonic() when the latest request arrived, served or not."""
        self._refusing = False
        self._released = asyncio.Event()
        """Set by release_refused: the parked requests are answered."""
        self._unexpected = FailureLog(log, "requests failed with an unexpected error")
        self.extensions: tuple[str, ...] = EXTENSIONS
        """What ServerMetadata lists; the server adds the transport's (system_shared_memory)."""
        self.quarantine: QuarantineWriter | None = None
        """Where requests whose verdict is not clean are kept (guard serve --quarantine); None: off."""
        self.quotas = QuotaBook()
        """Per-client quotas by model ([clients]; the server sets the defaults from its flags)."""
        self.camera_owners = CameraOwners()
        """Which identity owns each camera_id, by model (guard.serving.camera_owners)."""
        self.query_watch = QueryWatches()
        """Query-attack detection per model and identity ([clients] query_attack; the server sets
        --query-attack and the metric), guard.serving.query_watch."""
        self.explain = ExplainGrants()
        """Which identities may ask for raw detector scores (EXPLAIN); the server sets it from
        --explain-identities and whether it authenticates (guard.serving.grants)."""

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and all(m.ready for m in self.models.values())

    def stop_accepting(self) -> None:
        """New requests are no longer served: each waits (parked) until `release_refused`, then fails
        with UNAVAILABLE. Why wait rather than answer at once: a client that sends again as soon as
        it has its answer keeps new calls arriving, and gRPC cancels (CANCELLED, not UNAVAILABLE) every
        call it has received but not yet handed to the server when it stops. Parked, such a client
        sends nothing more, so the server can stop with no call left in between."""
        self._released.clear()
        self._refusing = True

    @property
    def refusing(self) -> bool:
        """Whether new requests are parked (stop_accepting)."""
        return self._refusing

    async def over_limit(self) -> None:
        """A request the transport refuses before it reaches `infer` (the concurrency limit). It is an
        arrival all the same, and while the server stops accepting it is parked like every new
        request, then fails UNAVAILABLE: answered at once, its client would send again at once, and
        its next call could be one gRPC cancels when it stops (CANCELLED). Parked, it sends nothing
        more; what it holds is its message's bytes, for the moments until gRPC stops accepting."""
        self.last_arrival = time.monotonic()
        if self._refusing:
            await self._refuse()

    def release_refused(self) -> None:
        """Answer the parked requests (UNAVAILABLE), and any later one at once."""
        if self._refusing:
            self._released.set()

    def flush_logs(self) -> None:
        """Write what the failure log counted and has not written yet (the server is stopping)."""
        self._unexpected.flush()

    def model(self, name: str, version: str = "") -> ModelRuntime:
        runtime = self.models.get(name)
        if runtime is None:
            reason = self.control.failure(name) if self.control is not None else None
            if reason is not None:  # in the repository, but its load failed: say why, and that it may come back
                raise ModelUnavailable(f"model '{name}' is not served: its load failed: {reason}")
            raise ModelNotFound(f"unknown model '{name}': serving {sorted(self.models)}")
        if version and version != runtime.config.version:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}': serving version '{runtime.config.version}'"
            )
        return runtime

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return not self.draining and self.model(name, version).ready
        except (ModelNotFound, ModelUnavailable):
            return False

    def repository_index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every model in the repository (RepositoryIndex)."""
        return self._manager().index(ready_only)

    async def load_model(self, name: str, parameters: dict[str, object]) -> None:
        """Load or reload one model from the repository, beside the copy serving now (RepositoryModelLoad)."""
        await self._manager().load_requested(name, parameters)

    async def unload_model(self, name: str, parameters: dict[str, object]) -> None:
        """Stop serving one model once its requests are answered (RepositoryModelUnload)."""
        await self._manager().unload_requested(name, parameters)

    def _manager(self) -> ModelManager:
        if self.control is None:
            raise GuardError("this server has no model repository to control")
        return self.control

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, self.extensions

    def policy_of(self, runtime: ModelRuntime) -> str:
        return self.policy_override or runtime.config.policy

    async def infer(
        self, request: InferRequest, datatypes: dict[str, str], encoded: EncodedInputs | None = None
    ) -> InferResponse:
        """Run one request through its model's batcher and guard; raises GuardError subclasses.
        `encoded`: a transport's tensors, not decoded yet (request.inputs and request.outputs are
        empty until then); they are decoded only once the model has room for the request and their
        names and headers meet its contract, so refusing a request costs no decoding."""
        start = self.last_arrival = time.monotonic()
        call = _Call(request, start)
        try:
            runtime = await self._route(call)
            # The client's own quota first: a flooding client is refused for a lookup, whatever else it asks.
            call.lease = self.quotas.admit(runtime.config.name, runtime.config.clients, request.identity)
            await self.query_watch.check(runtime.config, request.identity)  # a blocked identity costs a lookup
            if request.parameters.get(EXPLAIN) is True:  # refused before any work is done for it
                self.explain.check(request.identity, EXPLAIN)
            camera = self._admit(runtime, request)
            rows = await self._read(runtime, request, datatypes, encoded)
            config = runtime.config
            deadline = effective_deadline(request, config.batching.default_timeout_microseconds, start, config.name)
            result = await runtime.infer(request.inputs, rows, deadline.at, camera, deadline.what)
            call.verdict = result.verdict.verdict
            alert = self._observe(runtime, request, result.verdict, camera)
            quarantine_verdict(self.quarantine, runtime.config, request, result, identity=request.identity)
            client = await self.query_watch.observe(
                runtime.config, request.identity, request.inputs, result.outputs, result.query_rows
            )
            response = self._respond(runtime, request, result, alert)
            if client is not None:
                response.parameters[CLIENT_VERDICT] = client
            return response
        # The one place a request's outcome becomes its status code (its metrics and access line).
        except GuardError as exc:
            call.code = exc.status
            raise
        except asyncio.CancelledError:
            # Not an Exception: without this branch a request the client gave up on (or whose
            # gRPC deadline passed) would be counted as OK.
            call.code = cancelled_status(request.deadline)
            raise
        except Exception as exc:
            # A bug, not a client's or the model's fault: logged once with its traceback and then
            # counted (guard.serving.logs), and answered INTERNAL like any other GuardError.
            call.code = "INTERNAL"
            self._unexpected(exc)
            raise GuardError(f"internal error: {exc}") from exc
        finally:
            self._finish(call)

    async def _route(self, call: _Call) -> ModelRuntime:
        """The copy of the model that serves the request, which counts it from here on."""
        request = call.request
        if self._refusing:
            call.runtime = self.models.get(request.model_name)  # for its metrics only
            await self._refuse()
        runtime = call.runtime = self.model(request.model_name, request.model_version)
        # Counted on this copy of the model until answered: a reload closes the copy it replaced
        # only when its count is zero. Nothing awaits between the lookup and this line.
        runtime.enter()
        call.entered = runtime
        self.active += 1
        return runtime

    def _admit(self, runtime: ModelRuntime, request: InferRequest) -> str | None:
        """The request's camera, once its client owns it and its model's queue has room for it."""
        camera = camera_of(request.parameters)
        if camera is not None:
            clients = runtime.config.clients
            self.camera_owners.claim(runtime.config.name, camera, request.identity, clients.max_cameras)
        if not runtime.batcher.has_room(camera):  # before any per-request work: refusing must stay cheap
            raise QueueFull(runtime.batcher.full_reason(camera))
        return camera

    @staticmethod
    async def _read(
        runtime: ModelRuntime, request: InferRequest, datatypes: dict[str, str], encoded: EncodedInputs | None
    ) -> int:
        """The request's inputs, decoded if need be and checked against the model's contract; returns its rows."""
        if encoded is not None:
            request.inputs, request.outputs, datatypes = await encoded.decode(runtime.config)
        return validate(runtime.config, request, datatypes)

    def _observe(
        self, runtime: ModelRuntime, request: InferRequest, verdict: Verdict, camera: str | None
    ) -> bool | None:
        """The verdict's metrics and log line, and its camera's alert state (None: no camera)."""
        runtime.metrics.scores(verdict.scores, verdict.flagged_by)
        if verdict.flagged:  # under shadow this line is the only trace a client never sees
            log.log(
                logging.WARNING if self.policy_of(runtime) == policy.SHADOW else logging.INFO,
                "flagged model=%s id=%s verdict=%s by=%s score=%.3f",
                runtime.config.name,
                loggable_id(request.id),
                verdict.verdict,
                ",".join(verdict.flagged_by),
                verdict.score,
            )
        return None if camera is None else observe_camera(runtime, camera, verdict.flagged)

    def _respond(
        self, runtime: ModelRuntime, request: InferRequest, result: RowsResult, alert: bool | None
    ) -> InferResponse:
        """The answer: the outputs asked for, and the verdict's parameters as the policy has them."""
        parameters = policy.apply(self.policy_of(runtime), result.verdict)
        if parameters and alert is not None:
            parameters[CAMERA_ALERT] = alert
        if parameters and request.parameters.get(EXPLAIN) is True:
            parameters[DETECTOR_SCORES] = json.dumps(result.verdict.scores, sort_keys=True)
            if result.suspects:
                parameters[SUSPECTS] = json.dumps(result.suspects, sort_keys=True, ensure_ascii=False)
        wanted = request.outputs or tuple(spec.name for spec in runtime.config.outputs)
        return InferResponse(
            runtime.config.name,
            runtime.config.version,
            request.id,
            [(name, result.outputs[name]) for name in wanted],
            parameters,
        )

    def _finish(self, call: _Call) -> None:
        """The request's books, whatever its outcome: its copy's count, its metrics, its access line."""
        elapsed = time.monotonic() - call.start
        if call.lease is not None:
            call.lease.release()
        if call.entered is not None:
            self.active -= 1
            call.entered.leave()
        if call.runtime is not None:
            call.runtime.metrics.request(call.verdict, call.code, elapsed)
        if access.isEnabledFor(logging.INFO):
            # The request's id and identity only: never its metadata (credentials) or parameters.
            access.info(
                "model=%s id=%s verdict=%s code=%s ms=%.3f client=%s",
                loggable(call.request.model_name),
                loggable_id(call.request.id),
                call.verdict,
                call.code,
                elapsed * 1e3,
                loggable(call.request.identity),
            )

    async def _refuse(self) -> None:
        self.parked += 1
        try:
            await self._released.wait()
        finally:
            self.parked -= 1
        raise QueueFull("server is shutting down: send the request to another replica")
