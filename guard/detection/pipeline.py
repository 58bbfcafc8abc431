"""The guard pipeline, run once per batch: preprocess -> variants -> ONE backend call -> detector scores.

The model's outputs for the original rows come from the same backend call as the detectors'
variants, so a clean request costs no forward pass beyond the guard's own variants. With a torch
backend the batch stays on the guard's device from the variants to the scores; with ONNX Runtime
it crosses to the host once each way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from guard.backends.base import Backend
from guard.detection.boxes import BoxSettings
from guard.detection.detectors import Detector, Outputs
from guard.detection.preprocess import Preprocessor
from guard.detection.preprocess.base import Feed
from guard.detection.texts import Rows, TextRows, concat, to_host, variants_of
from guard.protocol.errors import DetectorError, GuardError, InvalidInput


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]
    """The model's outputs for the original rows only."""
    timings: dict[str, float]
    """Seconds spent per stage (preprocess, squeeze, backend, detect)."""
    rows_sent: int
    """Rows the backend ran: the originals plus every detector variant."""
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    """Each detector's [B] scores; none without detectors."""
    suspects: dict[str, list[list[str]]] = field(default_factory=dict)
    """Text models: the words each detector that names any blames, per row (guard_explain)."""


@dataclass
class PreparedBatch:
    inputs: dict[str, Any]
    """The batch's inputs over the kept requests (empty when none is)."""
    kept: list[int]
    """Indices of the requests in the batch, in order."""
    failed: dict[int, str]
    """Requests the preprocessor could not prepare, with what was wrong."""


def to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


class GuardPipeline:
    def __init__(
        self,
        backend: Backend,
        detectors: list[Detector],
        *,
        guarded_input: str,
        logits_output: str,
        output_names: list[str],
        device: torch.device,
        features_output: str | None = None,
        preprocessor: Preprocessor | None = None,
        boxes: BoxSettings | None = None,
    ):
        """boxes: a detection model's box format; None for a classifier."""
        needs_features = [d.name for d in detectors if d.needs_features]
        if needs_features and features_output is None:
            raise DetectorError(f"detectors {needs_features} need the model's features: set features_output")
        self.features_output = features_output if needs_features else None
        self.backend = backend
        self.detectors = detectors
        self.guarded_input = guarded_input
        self.logits_output = logits_output
        self.output_names = output_names
        self.device = device
        self.preprocessor = preprocessor
        self.boxes = boxes
        self.torch_io = backend.io == "torch"

    # -- building a batch -------------------------------------------------------------------

    def shape_key(self, inputs: dict[str, np.ndarray]) -> tuple[tuple[str, Any], ...]:
        """Requests with equal keys can share a batch: the same shape on every input, except the
        one a preprocessor reshapes anyway, whose bucket (text: its length) counts instead."""
        if self.preprocessor is None:
            return tuple((name, array.shape[1:]) for name, array in inputs.items())
        source = self.preprocessor.source.name
        key: list[tuple[str, Any]] = [(name, array.shape[1:]) for name, array in inputs.items() if name != source]
        bucket = self.preprocessor.bucket(inputs[source]) if source in inputs else None
        return tuple(key) if bucket is None else (*key, (source, bucket))

    def prepare(self, requests: list[dict[str, np.ndarray]]) -> PreparedBatch:
        """One batch's inputs from requests of equal shape_key: the preprocessed guarded tensor (on
        the guard's device) and every other input concatenated, over the requests the
        preprocessor could prepare. Always a copy: decoded raw inputs are read-only views of the
        request message."""
        failed: dict[int, str] = {}
        guarded: dict[str, Rows] = {}  # the preprocessor's output, by its name
        if self.preprocessor is not None:
            source = self.preprocessor.source.name
            prepared = self.preprocessor.prepare([r[source] for r in requests], self.device)
            failed = prepared.failed
            if prepared.rows is not None:
                guarded[self.preprocessor.output] = prepared.rows
        kept = [i for i in range(len(requests)) if i not in failed]
        merged: dict[str, Any] = {}
        if kept:
            for name in requests[0]:
                if self.preprocessor is None or name != self.preprocessor.source.name:
                    merged[name] = np.concatenate([requests[i][name] for i in kept])
            merged.update(guarded)
        return PreparedBatch(merged, kept, failed)

    def batch(self, requests: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        """prepare(), for callers whose every request must be usable (calibration references)."""
        prepared = self.prepare(requests)
        if prepared.failed:
            raise InvalidInput("; ".join(prepared.failed.values()))
        return prepared.inputs

    # -- running it ---------------------------------------------------------------------------

    def run(self, inputs: dict[str, Any], deadline: float | None = None) -> BatchResult:
        """Outputs and raw detector scores for one batch (rows along axis 0 of every input, as
        `batch` builds them); `deadline` (time.monotonic) reaches the backend call."""
        if not self.detectors and self.preprocessor is None and not self.torch_io:
            return self._forward(inputs, deadline)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        x = self._rows(inputs[self.guarded_key])
        batch = x.shape[0]
        try:
            extra = [variants_of(d, x) for d in self.detectors]
        except Exception as exc:
            raise DetectorError(f"building detector variants failed: {exc}") from exc
        copies = 1 + sum(d.num_variants for d in self.detectors)
        guarded = concat([x, *extra]) if copies > 1 else x
        feeds = {name: self._repeat(value, copies) for name, value in inputs.items() if name != self.guarded_key}
        feeds.update(self._model_feeds(guarded))
        timings["squeeze"] = time.perf_counter() - start

        start = time.perf_counter()
        wanted = list(
            dict.fromkeys(
                [*self.output_names, self.logits_output, *([self.features_output] if self.features_output else [])]
            )
        )
        raw = self.backend.infer(feeds, wanted, deadline)
        timings["backend"] = time.perf_counter() - start

        start = time.perf_counter()
        outputs = {name: to_numpy(raw[name][:batch]) for name in self.output_names}
        scores = {}
        suspects: dict[str, list[list[str]]] = {}
        if self.detectors:
            features = raw.get(self.features_output) if self.features_output else None
            logits = self._on_device(raw[self.logits_output])
            feats = None if features is None else self._on_device(features)
            original, own = detector_outputs(self.detectors, logits, batch, feats, self.boxes)
            scores = self._score(original, own)
            if isinstance(x, TextRows):
                suspects = detector_suspects(self.detectors, x, original, own)
        timings["detect"] = time.perf_counter() - start
        return BatchResult(outputs, timings, guarded.shape[0], scores, suspects)

    def outputs(self, inputs: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
        """The model's named outputs (any, internal features included) for the original rows of a
        batch, without variants; and the guarded rows as "guarded" (what detectors learn from)."""
        guarded = self._rows(inputs[self.guarded_key])
        feeds = {name: self._repeat(value, 1) for name, value in inputs.items() if name != self.guarded_key}
        feeds.update(self._model_feeds(guarded))
        raw = self.backend.infer(feeds, list(dict.fromkeys(names)))
        return {**{name: to_numpy(raw[name]) for name in names}, "guarded": to_host(guarded)}

    def query_rows(self, inputs: dict[str, Any]) -> np.ndarray | None:
        """What query-attack fingerprints read of a prepared batch's rows: the preprocessor's view
        of its guarded rows (None where it offers none); without a preprocessor, the caller reads
        the request's own tensors."""
        return None if self.preprocessor is None else self.preprocessor.query_rows(inputs[self.guarded_key])

    @property
    def guarded_key(self) -> str:
        """Where a prepared batch keeps the guarded rows: the preprocessor's output, else the
        guarded model input itself."""
        return self.preprocessor.output if self.preprocessor is not None else self.guarded_input

    def _rows(self, value: Any) -> Rows:
        """A batch's guarded rows: text stays on the host, tensors go to the guard's device."""
        return value if isinstance(value, TextRows) else self._on_device(value)

    def _model_feeds(self, guarded: Rows) -> dict[str, Any]:
        """The guarded rows (originals and variants) as the model's inputs, in the backend's kind of array."""
        if self.preprocessor is not None:
            feeds: Mapping[str, Feed] = self.preprocessor.finish_inputs(guarded)
        elif isinstance(guarded, torch.Tensor):
            feeds = {self.guarded_input: guarded}
        else:
            raise DetectorError("rows of text need a text preprocessor to reach the model")
        if self.torch_io:
            return {name: self._on_device(value) for name, value in feeds.items()}
        # numpy as it is: a model that takes strings gets its object array of str unchanged
        return {name: np.ascontiguousarray(to_numpy(value)) for name, value in feeds.items()}

    def _on_device(self, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(self.device)
        return torch.from_numpy(value).to(self.device)

    def _repeat(self, value: Any, copies: int) -> Any:
        """A pass-through input once per variant group, in the backend's kind of array."""
        if self.torch_io:
            value = self._on_device(value)
            return value.repeat(copies, *[1] * (value.dim() - 1)) if copies > 1 else value
        value = to_numpy(value)
        return np.concatenate([value] * copies) if copies > 1 else value

    def _forward(self, inputs: dict[str, np.ndarray], deadline: float | None) -> BatchResult:
        """No detectors and nothing to convert: the original rows only, no tensor conversions."""
        start = time.perf_counter()
        raw = self.backend.infer(inputs, self.output_names, deadline)
        rows = len(inputs[self.guarded_input])
        return BatchResult(raw, timings={"backend": time.perf_counter() - start}, rows_sent=rows)

    def _score(self, original: Outputs, own: list[Outputs | None]) -> dict[str, np.ndarray]:
        scores = scores_of(self.detectors, original, own)
        table = torch.stack(list(scores.values())).double().cpu().numpy()  # one host copy for all, [D, B]
        return dict(zip(scores, table))


def detector_outputs(
    detectors: list[Detector],
    logits: torch.Tensor,
    batch: int,
    features: torch.Tensor | None = None,
    boxes: BoxSettings | None = None,
) -> tuple[Outputs, list[Outputs | None]]:
    """One backend call's outputs, cut into the originals' and each detector's variants' (None for a
    detector without variants). Views only; softmax is computed once for every detector."""
    # [1 + sum V, B, classes]: the original first, then each detector's variants in order.
    grouped = logits.reshape(-1, batch, *logits.shape[1:])
    probabilities = torch.softmax(grouped.float(), dim=-1) if boxes is None else None
    feats = None if features is None else features.reshape(grouped.shape[0], batch, *features.shape[1:]).float()

    def part(rows: slice | int) -> Outputs:
        return Outputs(
            grouped[rows],
            None if probabilities is None else probabilities[rows],
            None if feats is None else feats[rows],
            boxes,
        )

    offset, own = 1, []
    for detector in detectors:
        count = detector.num_variants
        own.append(part(slice(offset, offset + count)) if count else None)
        offset += count
    return part(0), own


def detector_scores(
    detectors: list[Detector],
    logits: torch.Tensor,
    batch: int,
    features: torch.Tensor | None = None,
    boxes: BoxSettings | None = None,
) -> dict[str, torch.Tensor]:
    """Each detector's [B] scores from one backend call's outputs over the original rows and every
    variant; differentiable when the outputs are (the adaptive attack calls it under autograd).
    A detector that fails raises DetectorError naming it."""
    return scores_of(detectors, *detector_outputs(detectors, logits, batch, features, boxes))


def scores_of(detectors: list[Detector], original: Outputs, own: list[Outputs | None]) -> dict[str, torch.Tensor]:
    """Each detector's [B] scores from the batch's outputs as detector_outputs cuts them."""
    scores = {}
    for detector, variants in zip(detectors, own):
        try:
            scores[detector.name] = detector.score(original, variants)
        except GuardError:
            raise
        except Exception as exc:
            raise DetectorError(f"detector {detector.name} failed: {exc}") from exc
    return scores


def detector_suspects(
    detectors: list[Detector], rows: TextRows, original: Outputs, own: list[Outputs | None]
) -> dict[str, list[list[str]]]:
    """The words each text detector blames, per row (what `guard_explain` shows), from the outputs
    the scores were computed on; detectors that name none are left out. A detector that fails
    raises DetectorError naming it."""
    named = {}
    for detector, variants in zip(detectors, own):
        try:
            words = detector.suspects(rows, original, variants)
        except Exception as exc:
            raise DetectorError(f"detector {detector.name} failed naming suspects: {exc}") from exc
        if words is not None:
            named[detector.name] = words
    return named
