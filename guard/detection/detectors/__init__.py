"""Detector registry: config `type` -> class, with each type's parameters validated on load.
A new detector is one file plus one line in REGISTRY; an installed package adds one through the
entry-point group `guard.detectors` (guard.protocol.plugins), which AVAILABLE merges in."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from guard.detection.detectors.base import CLASSIFICATION, DETECTION, IMAGE, TENSOR, Detector, FitData, Outputs
from guard.detection.detectors.box_consistency import BoxConsistencyDetector
from guard.detection.detectors.confidence import ConfidenceMarginDetector
from guard.detection.detectors.feature_gaussian import FeatureGaussianDetector
from guard.detection.detectors.feature_squeeze import FeatureSqueezeDetector
from guard.detection.detectors.mahalanobis import MahalanobisDetector
from guard.detection.detectors.network import DetectorNetwork
from guard.detection.detectors.patch_occlusion import PatchOcclusionDetector
from guard.detection.detectors.robust_density import RobustDensityDetector
from guard.detection.detectors.squeezing import BitDepthDetector, MedianDetector
from guard.detection.detectors.strip import StripDetector
from guard.detection.detectors.text_deletion import WordDeletionDetector
from guard.detection.detectors.text_frequency import FrequencySubstitutionDetector
from guard.detection.detectors.text_rare_words import RareWordDeletionDetector
from guard.detection.detectors.text_sentences import SentenceDeletionDetector
from guard.detection.detectors.text_spelling import SpellingDetector
from guard.protocol.errors import ConfigError
from guard.protocol.plugins import PluginRegistry, subclass_of
from guard.protocol.settings import TableReader, read_params

REGISTRY: dict[str, type[Detector]] = {
    cls.kind: cls
    for cls in (
        BitDepthDetector,
        MedianDetector,
        MahalanobisDetector,
        RobustDensityDetector,
        StripDetector,
        DetectorNetwork,
        ConfidenceMarginDetector,
        BoxConsistencyDetector,
        FeatureGaussianDetector,
        PatchOcclusionDetector,
        FeatureSqueezeDetector,
        SpellingDetector,
        FrequencySubstitutionDetector,
        WordDeletionDetector,
        SentenceDeletionDetector,
        RareWordDeletionDetector,
    )
}
"""The built-in detector types."""
AVAILABLE = PluginRegistry("guard.detectors", REGISTRY, subclass_of(Detector), "detector type")
"""The built-ins plus the installed plugins: what a config's `type` may name."""

__all__ = [
    "AVAILABLE",
    "CLASSIFICATION",
    "DETECTION",
    "IMAGE",
    "REGISTRY",
    "TENSOR",
    "Detector",
    "FitData",
    "Outputs",
    "build_detectors",
    "squeezer_tables",
]


def _build(reader: TableReader, require_threshold: bool, input_kind: str | None, output_kind: str) -> Detector:
    table = reader.table
    kind = table.get("type")
    cls = AVAILABLE.resolve(reader, "type", kind)
    extra = set(table) - {"name", "type", "threshold", "monitor", *cls.parameters}
    if extra:
        raise reader.fail(sorted(extra)[0], f"a parameter of {kind} ({', '.join(cls.parameters)})")
    if input_kind is not None and input_kind not in cls.input_kinds:
        raise reader.fail(
            "type", f"a detector for {input_kind} inputs ({kind} examines {' or '.join(cls.input_kinds)} inputs)", kind
        )
    if output_kind not in cls.output_kinds:
        raise reader.fail(
            "type", f"a detector for {output_kind} outputs ({kind} reads {' or '.join(cls.output_kinds)} outputs)", kind
        )
    name = reader.get("name", str, kind)
    if not name:
        raise reader.fail("name", "a non-empty string", name)
    params = read_params(reader, cls.parameters, check_artifacts=require_threshold)
    monitor = reader.get("monitor", bool, False, "true or false")
    threshold = table.get("threshold")
    if threshold is None and require_threshold:
        raise reader.fail("threshold", "a calibrated threshold (run `guard calibrate`)")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold <= 0
    ):
        raise reader.fail("threshold", "a positive finite number", threshold)
    try:
        return cls(
            name=name,
            threshold=None if threshold is None else float(threshold),
            directory=reader.directory,
            monitor=monitor,
            **params,
        )
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises (zip, pickle, missing array)
        raise _artifact_error(reader, cls, params, exc) from exc


def _artifact_error(reader: TableReader, cls: type[Detector], params: dict[str, Any], exc: Exception) -> ConfigError:
    """A detector whose construction failed: its artifact file is truncated, not an .npz, or lacks
    an array. The error names the config key that points at the file (detectors[2].statistics),
    the file and the cause, instead of a bare zipfile or numpy error at startup."""
    artifacts = [key for key, spec in cls.parameters.items() if spec.artifact]
    cause = f"{type(exc).__name__}: {exc}"
    if not artifacts:
        return ConfigError(reader.path, reader.prefix.rstrip("."), f"a {cls.kind} detector that loads ({cause})")
    key = artifacts[0]
    hint = cls.parameters[key].hint
    return reader.fail(
        key, f"a readable {cls.kind} artifact {reader.directory / params[key]} ({cause}; {hint})", params[key]
    )


def build_detectors(
    path: Path,
    tables: Iterable[dict[str, Any]],
    require_threshold: bool = True,
    input_kind: str | None = None,
    output_kind: str = CLASSIFICATION,
) -> list[Detector]:
    """Instantiate every [[detectors]] table of a model config (path: its config.toml), names unique.

    With require_threshold (serving), thresholds and artifact files must exist; without it
    (calibration), detectors are built to be fitted and calibrated. `input_kind` (the model's
    guarded input, guard.detection.settings) must be one each detector examines.
    """
    readers = TableReader(path, {"detectors": list(tables)}).tables("detectors")
    detectors = [_build(r, require_threshold, input_kind, output_kind) for r in readers]
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise ConfigError(path, "detectors", "unique detector names", names)
    if detectors and all(d.monitor for d in detectors):
        raise ConfigError(path, "detectors", "at least one detector that is not a monitor", names)
    return detectors


def squeezer_tables(bit_depths: list[int] | None = None, medians: list[int] | None = None) -> list[dict[str, Any]]:
    """Squeezing detectors by parameter; the default is the paper's CIFAR-10/ImageNet pair
    (5-bit depth, 2x2 median), which keeps clean accuracy on natural images. (Its MNIST choice,
    1 bit, suits near-binary images only.)"""
    if bit_depths is None and medians is None:
        bit_depths, medians = [5], [2]
    return [{"name": f"bit_depth_{b}", "type": BitDepthDetector.kind, "bits": b} for b in bit_depths or []] + [
        {"name": f"median_{s}x{s}", "type": MedianDetector.kind, "size": s} for s in medians or []
    ]
