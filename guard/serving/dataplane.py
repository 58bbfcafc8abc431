"""The data plane: routing, validation, deadlines, policy and responses. It knows no transport."""

from __future__ import annotations

import json
import logging
import time

from guard import __version__
from guard.protocol.errors import GuardError, InvalidInput, ModelNotFound
from guard.protocol.types import InferRequest, InferResponse
from guard.serving import policy
from guard.serving.runtime import ModelRuntime
from guard.serving.validation import validate

log = logging.getLogger("guard.serving.dataplane")
access = logging.getLogger("guard.access")

SERVER_NAME = "guard"
# A request parameter asking for every detector's raw score (evaluation, debugging); the answer
# is a JSON object in the response parameter DETECTOR_SCORES. Never under policy shadow.
EXPLAIN = "guard_explain"
DETECTOR_SCORES = "guard_detector_scores"
EXTENSIONS = ("guard_verdict",)


class DataPlane:
    def __init__(self, models: dict[str, ModelRuntime], policy_override: str | None = None):
        self.models = models
        self.policy_override = policy_override

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    def model(self, name: str, version: str = "") -> ModelRuntime:
        runtime = self.models.get(name)
        if runtime is None:
            raise ModelNotFound(f"unknown model '{name}': serving {sorted(self.models)}")
        if version and version != runtime.config.version:
            raise ModelNotFound(f"model '{name}' has no version '{version}': serving version "
                                f"'{runtime.config.version}'")
        return runtime

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.model(name, version).ready
        except ModelNotFound:
            return False

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, EXTENSIONS

    def policy_of(self, runtime: ModelRuntime) -> str:
        return self.policy_override or runtime.config.policy

    async def infer(self, request: InferRequest, datatypes: dict[str, str]) -> InferResponse:
        """Run one request through its model's batcher and guard; raises GuardError subclasses."""
        start = time.monotonic()
        runtime, verdict_name, code = None, "none", "OK"
        try:
            runtime = self.model(request.model_name, request.model_version)
            rows = validate(runtime.config, request, datatypes)
            result = await runtime.infer(request.inputs, rows, self._deadline(request, runtime, start))
            verdict = result.verdict
            verdict_name = verdict.verdict
            runtime.metrics.scores(verdict.scores, verdict.flagged_by)
            if verdict.flagged:  # under shadow this line is the only trace a client never sees
                log.log(logging.WARNING if self.policy_of(runtime) == "shadow" else logging.INFO,
                        "flagged model=%s id=%s verdict=%s by=%s score=%.3f", runtime.config.name,
                        request.id or "-", verdict.verdict, ",".join(verdict.flagged_by), verdict.score)
            parameters = policy.apply(self.policy_of(runtime), verdict)
            if parameters and request.parameters.get(EXPLAIN) is True:
                parameters[DETECTOR_SCORES] = json.dumps(verdict.scores, sort_keys=True)
            wanted = request.outputs or tuple(spec.name for spec in runtime.config.outputs)
            return InferResponse(runtime.config.name, runtime.config.version, request.id,
                                 [(name, result.outputs[name]) for name in wanted], parameters)
        except GuardError as exc:
            code = exc.status
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            elapsed = time.monotonic() - start
            if runtime is not None:
                runtime.metrics.request(verdict_name, code, elapsed)
            access.info("model=%s id=%s verdict=%s code=%s ms=%.3f", request.model_name,
                        request.id or "-", verdict_name, code, elapsed * 1e3)

    @staticmethod
    def _deadline(request: InferRequest, runtime: ModelRuntime, start: float) -> float | None:
        """The earliest of the client's deadline, its `timeout` parameter (us) and the model default."""
        candidates = [request.deadline] if request.deadline is not None else []
        timeout = request.parameters.get("timeout")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
                raise InvalidInput(f"parameter 'timeout': expected microseconds as a non-negative integer, "
                                   f"got {timeout!r}")
            if timeout:
                candidates.append(start + timeout / 1e6)
        default = runtime.config.batching.default_timeout_microseconds
        if default:
            candidates.append(start + default / 1e6)
        return min(candidates) if candidates else None
