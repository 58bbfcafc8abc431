"""One batch, synchronously, on a worker thread or the loop thread (guard.serving.batching): the
requests grouped by shape, each group prepared and run (guard.serving.fail_open), judged
(guard.serving.judging), split back into each request's rows, and, with an upstream, forwarded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from guard.detection.pipeline import GuardPipeline
from guard.protocol.errors import GuardError, InvalidInput
from guard.protocol.tensors import row_spans, rows_of
from guard.protocol.types import Verdict
from guard.serving.fail_open import FailOpen
from guard.serving.judging import Judge
from guard.serving.recorder import RuntimeRecorder


@dataclass
class RowsResult:
    """One request's share of a batch: its output rows and its verdict."""

    # No defaults: every producer (this module, guard.serving.forwarding) says what each field is.
    outputs: dict[str, np.ndarray]
    verdict: Verdict
    suspects: dict[str, list[list[str]]]
    """Text models: the words each detector blames, per row of this request (guard_explain)."""
    query_rows: np.ndarray | None
    """Models with a preprocessor: what query-attack fingerprints read of this request's rows
    (guard.detection.preprocess: an image's thumbnail); None where there is none."""


Forward = Callable[[list[dict[str, np.ndarray]], list[RowsResult], float | None], list[RowsResult | GuardError]]
"""Answers a group's requests upstream, given what the local copy served (guard.serving.forwarding)."""


class BatchExecution:
    def __init__(
        self,
        pipeline: GuardPipeline,
        runner: FailOpen,
        judge: Judge,
        recorder: RuntimeRecorder,
        forward: Forward | None = None,
    ):
        """pipeline: groups and prepares the requests; runner runs them through it."""
        self.pipeline = pipeline
        self.runner = runner
        self.judge = judge
        self.recorder = recorder
        self.forward = forward

    def flush_logs(self) -> None:
        """Write what the failure logs counted and have not written yet (the model is closing)."""
        self.runner.flush_log()

    def run(
        self,
        requests: list[dict[str, np.ndarray]],
        deadline: float | None = None,
        cameras: list[str | None] | None = None,
    ) -> list[RowsResult | GuardError]:
        """`deadline` is the batch's latest: the call is worth finishing while any request waits.
        `cameras`: each request's camera_id (or None), for per-camera baselines.
        Requests whose shapes differ on a variable dimension run as separate groups."""
        flows: list[str | None] = cameras or [None] * len(requests)
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(self.pipeline.shape_key(request), []).append(i)
        results: dict[int, RowsResult | GuardError] = {}
        for members in groups.values():
            results.update(
                zip(members, self._group([requests[i] for i in members], deadline, [flows[i] for i in members]))
            )
        return [results[i] for i in range(len(requests))]

    def _group(
        self, requests: list[dict[str, np.ndarray]], deadline: float | None, cameras: list[str | None]
    ) -> list[RowsResult | GuardError]:
        with torch.inference_mode():
            prepared = self.pipeline.prepare(requests)
            results: dict[int, RowsResult | GuardError] = {i: InvalidInput(why) for i, why in prepared.failed.items()}
            if not prepared.kept:
                return [results[i] for i in range(len(requests))]  # each failed its own preprocessing
            kept = [requests[i] for i in prepared.kept]
            queried = self.pipeline.query_rows(prepared.inputs)
            result = self.runner.run(prepared.inputs, kept, deadline)
        spans = row_spans([rows_of(r) for r in kept])
        judged = self.judge(result.scores, spans, [cameras[i] for i in prepared.kept])
        self.recorder.batch(result, len(kept))
        served = [
            RowsResult(
                {n: v[span] for n, v in result.outputs.items()},
                verdict,
                {name: rows[span] for name, rows in result.suspects.items()},
                None if queried is None else queried[span],
            )
            for span, verdict in zip(spans, judged)
        ]
        answers: list[RowsResult | GuardError] = list(served)
        if self.forward is not None:
            answers = self.forward(kept, served, deadline)
        results.update(zip(prepared.kept, answers))
        return [results[i] for i in range(len(requests))]
