"""The detection part of a model config: which input the detectors examine, which outputs they
read, the [[detectors]] tables (validated by guard.detection.detectors), how they combine
([ensemble]), the target false-positive rate and where the guard's tensor work runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guard.detection.boxes import FORMATS, BoxSettings
from guard.detection.detectors.base import CLASSIFICATION, DETECTION, IMAGE, TENSOR, TEXT
from guard.protocol.settings import TableReader
from guard.protocol.spec import TensorSpec

DEVICES = ("auto", "cpu", "cuda")
METHODS = ("union", "fisher", "omnibus")
KEYS = (
    "guarded_input",
    "logits_output",
    "features_output",
    "target_fpr",
    "device",
    "detectors",
    "ensemble",
    "output_kind",
    "boxes",
)
OUTPUT_KINDS = (CLASSIFICATION, DETECTION)


@dataclass(frozen=True)
class EnsembleConfig:
    method: str = "union"
    """How detectors combine: "union" (any detector over its threshold), "fisher" or "omnibus"
    (guard.detection.ensemble)."""
    references: str = "ensemble.npz"
    """fisher, omnibus: the detectors' clean calibration scores, a file in the model directory."""
    threshold: float | None = None
    """fisher, omnibus: the threshold on Fisher's statistic."""
    min_p_threshold: float | None = None
    """omnibus: the threshold on -log of the smallest p-value."""


@dataclass(frozen=True)
class DetectionSettings:
    guarded_input: str
    """The model input the detectors examine (after preprocessing); other inputs pass through."""
    logits_output: str
    features_output: str | None = None
    """An extra model output with penultimate features, for feature-space detectors; internal
    (never returned to clients). `guard calibrate` adds it to the model when a detector needs it."""
    target_fpr: float = 0.05
    device: str = "auto"
    detectors: tuple[dict[str, Any], ...] = ()
    """Raw [[detectors]] tables; each detector type validates its own (guard.detection.detectors)."""
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    output_kind: str = CLASSIFICATION
    """classification: logits_output holds [classes] logits; detection: it holds raw boxes in the
    format `boxes` declares."""
    boxes: BoxSettings | None = None


def input_kind(spec: TensorSpec) -> str:
    """TEXT for strings (BYTES: only a text preprocessor hands detectors BYTES rows), IMAGE for a
    float [C, H, W] tensor declared NCHW with values inside [0, 1]; else TENSOR."""
    if spec.datatype == "BYTES":
        return TEXT
    is_float = spec.datatype in ("FP16", "FP32", "FP64")
    in_unit_range = spec.range is not None and spec.range[0] >= 0.0 and spec.range[1] <= 1.0
    if is_float and len(spec.shape) == 3 and spec.layout.upper() == "NCHW" and in_unit_range:
        return IMAGE
    return TENSOR


def _ensemble(r: TableReader, calibrated: bool) -> EnsembleConfig:
    r.unknown({"method", "references", "threshold", "min_p_threshold"})
    method = r.choice("method", METHODS, "union")
    if method == "union":
        return EnsembleConfig()
    if not calibrated:  # a model directory about to be calibrated: only the method counts...
        if "references" in r.table:  # ...though no key may name a file outside the model directory
            r.inside("references", r.get("references", str))
        return EnsembleConfig(method)
    references = r.file("references", "ensemble.npz", "the ensemble's clean scores (run `guard calibrate`)")
    thresholds = {
        key: r.positive_float(key, ..., "a positive finite number (run `guard calibrate`)")
        for key in (("threshold", "min_p_threshold") if method == "omnibus" else ("threshold",))
    }
    name = str(references.relative_to(r.directory))
    return EnsembleConfig(method, name, thresholds["threshold"], thresholds.get("min_p_threshold"))


def _boxes(r: TableReader) -> BoxSettings:
    r.unknown({"format", "score_threshold", "iou_threshold", "max_detections"})
    d = BoxSettings()
    settings = BoxSettings(
        format=r.choice("format", FORMATS, d.format),
        score_threshold=r.get("score_threshold", float, d.score_threshold),
        iou_threshold=r.get("iou_threshold", float, d.iou_threshold),
        max_detections=r.positive("max_detections", d.max_detections),
    )
    for key in ("score_threshold", "iou_threshold"):
        if not 0.0 <= getattr(settings, key) <= 1.0:
            raise r.fail(key, "a number in [0, 1]", getattr(settings, key))
    return settings


def read_detection_settings(
    r: TableReader, model_inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], calibrated: bool = True
) -> DetectionSettings:
    """From the top level of a model config; model_inputs are what the model takes (after
    preprocessing), outputs what it returns to clients. calibrated=False reads a config whose
    thresholds `guard calibrate` has yet to write."""
    guarded = r.get("guarded_input", str, model_inputs[0].name)
    if guarded not in {s.name for s in model_inputs}:
        raise r.fail(
            "guarded_input",
            f"the name of one of the model's inputs ({', '.join(s.name for s in model_inputs)})",
            guarded,
        )
    logits = r.get("logits_output", str, outputs[0].name)
    if logits not in {s.name for s in outputs}:
        raise r.fail("logits_output", "the name of one of [[outputs]]", logits)
    features = r.get("features_output", str, None)
    if features is not None and features in {s.name for s in outputs}:
        raise r.fail("features_output", "an internal output not listed in [[outputs]]", features)
    target_fpr = r.get("target_fpr", float, 0.05)
    if not 0.0 < target_fpr < 1.0:
        raise r.fail("target_fpr", "a rate strictly between 0 and 1", target_fpr)
    output_kind = r.choice("output_kind", OUTPUT_KINDS, CLASSIFICATION)
    if output_kind == CLASSIFICATION and "boxes" in r.table:
        raise r.fail("boxes", 'no [boxes] table unless output_kind = "detection"')
    return DetectionSettings(
        guarded_input=guarded,
        logits_output=logits,
        features_output=features,
        target_fpr=target_fpr,
        device=r.choice("device", DEVICES, "auto"),
        detectors=tuple(t.table for t in r.tables("detectors")),
        ensemble=_ensemble(r.sub("ensemble"), calibrated),
        output_kind=output_kind,
        boxes=_boxes(r.sub("boxes")) if output_kind == DETECTION else None,
    )
