"""forward_clean (docs/remote.md): the requests that passed the local check go to the upstream in
ONE call and take its outputs. The upstream never sees a flagged request, which keeps the local
copy's outputs (under enforce the data plane blocks it anyway)."""

from __future__ import annotations

import time

import numpy as np

from guard.backends.base import Backend
from guard.protocol.errors import GuardError
from guard.protocol.tensors import row_spans, rows_of
from guard.serving.execution import RowsResult
from guard.serving.model_config import ModelConfig
from guard.serving.recorder import RuntimeRecorder


class CleanForwarder:
    def __init__(self, upstream: Backend, config: ModelConfig, recorder: RuntimeRecorder):
        self.upstream = upstream
        self.config = config
        self.recorder = recorder

    def __call__(
        self, requests: list[dict[str, np.ndarray]], served: list[RowsResult], deadline: float | None
    ) -> list[RowsResult | GuardError]:
        """`served`: each request's local answer. When the upstream fails, only the forwarded
        requests fail: flagged ones still get their verdicts."""
        answers: list[RowsResult | GuardError] = list(served)
        passed = [i for i, r in enumerate(served) if not r.verdict.flagged]
        if not passed:
            return answers
        merged = {n: np.concatenate([requests[i][n] for i in passed]) for n in requests[0]}
        start = time.perf_counter()
        try:
            outputs = self.upstream.infer(merged, [s.name for s in self.config.outputs], deadline)
        except GuardError as exc:
            for i in passed:
                answers[i] = exc
            return answers
        finally:
            self.recorder.upstream(time.perf_counter() - start)
        for i, span in zip(passed, row_spans([rows_of(requests[i]) for i in passed])):
            answers[i] = RowsResult(
                {n: v[span] for n, v in outputs.items()}, served[i].verdict, served[i].suspects, served[i].query_rows
            )
        return answers
