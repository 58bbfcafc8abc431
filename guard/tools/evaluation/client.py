"""Send images through a live gateway over gRPC and collect what it answered.

Every image goes as its OWN request (one row), with `guard_explain: true`: the gateway gives one
verdict per request (its worst row), so one row per request is the only way to read per-image
detector scores off the wire. Requests are pipelined (a window of futures) and the gateway's
dynamic batcher merges them, so this is fast as well as faithful to what a client sees.

Rows go as FP32 tensors (`infer`) or, for models whose input is BYTES (a camera's JPEG or PNG
frames), as one encoded image per request (`infer_encoded`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from tqdm import tqdm

from guard.protocol.limits import MAX_MESSAGE_BYTES
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from guard.serving.dataplane import DETECTOR_SCORES, EXPLAIN
from guard.tools.credentials import NONE, ClientCredentials

log = logging.getLogger("guard.tools.evaluation.client")


CAMERA_ID = "camera_id"
"""The request parameter naming a frame's camera (guard.serving.cameras reads it)."""


@dataclass
class Served:
    """What the gateway returned for N images of one model."""

    logits: np.ndarray
    """[N, classes] from the served model."""
    scores: dict[str, np.ndarray]
    """Each detector's raw [N] scores, as the gateway computed them."""
    verdicts: np.ndarray
    """[N] guard_verdict strings (clean, adversarial, trigger)."""

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(1)


def in_flight(window: int, deadline: float, seconds_per_answer: float | None) -> int:
    """How many requests to keep in flight: at most `window`, and no more than the gateway answers
    in a quarter of the deadline, so a request never waits out its deadline in the gateway's queue
    behind the ones sent before it (a camera model with every detector answers a frame in a second
    or two on two busy CPU cores, and its model's default deadline is 5 s)."""
    if seconds_per_answer is None or seconds_per_answer <= 0:
        return min(window, 2)  # until the first answers say how fast the gateway is
    return max(1, min(window, int(deadline / 4 / seconds_per_answer)))


class GatewayClient:
    def __init__(
        self, url: str, window: int = 64, timeout: float = 60.0, credentials: ClientCredentials = NONE
    ) -> None:
        self.url = url
        self.window = window
        self.timeout = timeout
        self.deadlines: dict[str, float] = {}
        """Seconds a model's requests may take in the gateway ([batching] default_timeout_microseconds),
        where the caller knows it: the pipeline keeps its queue well inside it."""
        self.channel = credentials.channel(url, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.metadata = credentials.metadata()
        """Sent with every call: a gateway with --auth-tokens refuses calls without the bearer token."""
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self._inputs: dict[str, tuple[str, str]] = {}
        self._ranks: dict[str, int] = {}
        """Each model's input rank, batch dimension included: a BYTES row goes as [1] or [1, 1]."""

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, models: list[str], timeout: float = 60.0) -> None:
        """Block until every model answers ModelReady, or raise naming the ones that do not."""
        deadline = time.monotonic() + timeout
        missing = list(models)
        while missing and time.monotonic() < deadline:
            try:
                missing = [
                    m
                    for m in missing
                    if not self.stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=5, metadata=self.metadata).ready
                ]
            except grpc.RpcError as exc:
                log.debug("gateway %s not ready yet: %s", self.url, exc.code())
            if missing:
                time.sleep(0.2)
        if missing:
            raise RuntimeError(
                f"gateway {self.url} does not serve {missing} (serve an evaluation repository "
                "built by `guard evaluate --plan PLAN --workdir DIR`, policy flag)"
            )

    def _input_of(self, model: str) -> tuple[str, str]:
        if model not in self._inputs:
            meta = self.stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10, metadata=self.metadata)
            self._inputs[model] = (meta.inputs[0].name, meta.inputs[0].datatype)
            self._ranks[model] = max(1, len(meta.inputs[0].shape))
        return self._inputs[model]

    def _input_for(self, model: str, encoded: bool) -> tuple[str, str]:
        """The model's (input name, datatype), checked against what the caller sends: encoded images
        need a BYTES input, tensors a numeric one."""
        name, datatype = self._input_of(model)
        if (datatype == "BYTES") != encoded:
            raise ValueError(
                f"model {model} takes {datatype} input {name!r}: use "
                f"{'infer_encoded' if datatype == 'BYTES' else 'infer'}"
            )
        return name, datatype

    def _request(self, model: str, index: int) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model, id=str(index))
        request.parameters[EXPLAIN].bool_param = True
        return request

    def infer(self, model: str, x: np.ndarray, desc: str | None = None) -> Served:
        """Send every row of x ([N, ...]) to `model` as its own FP32 request; answers in row order."""
        x = np.asarray(x, np.float32)
        name, datatype = self._input_for(model, encoded=False)

        def request(i: int) -> pb.ModelInferRequest:
            message = self._request(model, i)
            message.raw_input_contents.append(np.ascontiguousarray(x[i][None], np.float32).tobytes())
            message.inputs.add(name=name, datatype=datatype, shape=[1, *x[i].shape])
            return message

        return self._pipeline(model, len(x), request, desc)

    def infer_encoded(
        self, model: str, items: Sequence[bytes], desc: str | None = None, cameras: Sequence[str] | None = None
    ) -> Served:
        """Send every encoded image (JPEG or PNG bytes) or UTF-8 text to `model`, whose input is BYTES,
        as its own request (one BYTES element, as a camera's client sends a frame), with its `camera_id` where
        `cameras` names one per item; answers in item order."""
        name, _ = self._input_for(model, encoded=True)
        shape = [1] * self._ranks[model]  # one item: [1] for an input of shape [], [1, 1] for [1]

        def request(i: int) -> pb.ModelInferRequest:
            message = self._request(model, i)
            message.inputs.add(name=name, datatype="BYTES", shape=shape).contents.bytes_contents.append(items[i])
            if cameras is not None:
                message.parameters[CAMERA_ID].string_param = cameras[i]
            return message

        return self._pipeline(model, len(items), request, desc)

    def _pipeline(
        self, model: str, count: int, request: Callable[[int], pb.ModelInferRequest], desc: str | None
    ) -> Served:
        """Requests request(0) .. request(count - 1), at most `window` in flight; answers in order."""
        # Futures are collected oldest first, so answers arrive in request order and are appended.
        logits: list[np.ndarray] = []
        scores: list[dict[str, float]] = []
        verdicts: list[str] = []
        pending: deque = deque()

        def collect() -> None:
            response = pending.popleft().result()
            params = response.parameters
            if DETECTOR_SCORES not in params:
                raise RuntimeError(
                    f"model {model}: response carries no {DETECTOR_SCORES}; the gateway must "
                    "serve it under policy flag or enforce, and know guard_explain"
                )
            scores.append(json.loads(params[DETECTOR_SCORES].string_param))
            verdicts.append(params["guard_verdict"].string_param)
            logits.append(np.frombuffer(response.raw_output_contents[0], np.float32))

        started, pace = time.monotonic(), None
        deadline = min(self.timeout, self.deadlines.get(model) or self.timeout)
        for i in tqdm(range(count), desc=desc or model, unit="req", leave=False, mininterval=1.0):
            pending.append(self.stub.ModelInfer.future(request(i), timeout=self.timeout, metadata=self.metadata))
            while pending and len(pending) >= in_flight(self.window, deadline, pace):
                collect()
                pace = (time.monotonic() - started) / len(verdicts)  # seconds per answer so far
        while pending:
            collect()
        names = sorted(scores[0]) if count else []
        return Served(
            np.stack(logits) if count else np.zeros((0, 0), np.float32),
            {n: np.array([s[n] for s in scores], np.float64) for n in names},
            np.array(verdicts),
        )
