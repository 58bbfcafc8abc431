"""Detector registry: config `type` -> class, with each type's parameters validated on load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from guard.detectors.base import Detector, FitData, Outputs, Param
from guard.detectors.confidence import ConfidenceMarginDetector
from guard.detectors.mahalanobis import MahalanobisDetector
from guard.detectors.network import DetectorNetwork
from guard.detectors.squeezing import BitDepthDetector, MedianDetector
from guard.detectors.strip import StripDetector
from guard.errors import ConfigError

REGISTRY: dict[str, type[Detector]] = {
    cls.kind: cls for cls in (BitDepthDetector, MedianDetector, MahalanobisDetector, StripDetector,
                              DetectorNetwork, ConfidenceMarginDetector)}

__all__ = ["REGISTRY", "Detector", "FitData", "Outputs", "Param", "build_detectors", "squeezer_tables"]


def _number_ok(value: Any, spec: Param) -> bool:
    if spec.kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if spec.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return False
    return (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)


def _param(path: Path, key: str, name: str, spec: Param, table: dict[str, Any], directory: Path | None) -> Any:
    value = table.get(name, spec.default)
    where = f"{key}.{name}"
    if value is ...:
        raise ConfigError(path, where, f"a {spec.kind.__name__} (required)")
    if spec.kind is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(path, where, "a non-empty string", value)
        if spec.artifact and directory is not None and not (directory / value).is_file():
            raise ConfigError(path, where, f"an artifact file in {directory} ({spec.hint})", value)
        return value
    if not _number_ok(value, spec):
        bounds = f" in [{spec.low:g}, {spec.high:g}]" if spec.low is not None and spec.high is not None else ""
        raise ConfigError(path, where, f"{'an integer' if spec.kind is int else 'a number'}{bounds}", value)
    return spec.kind(value)


def _build(path: Path, key: str, table: dict[str, Any], require_threshold: bool,
           directory: Path | None) -> Detector:
    kind = table.get("type")
    if kind not in REGISTRY:
        raise ConfigError(path, f"{key}.type", "one of " + ", ".join(REGISTRY), kind)
    cls = REGISTRY[kind]
    extra = set(table) - {"name", "type", "threshold", "monitor", *cls.parameters}
    if extra:
        raise ConfigError(path, f"{key}.{sorted(extra)[0]}", f"a parameter of {kind} ({', '.join(cls.parameters)})")
    name = table.get("name", kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(path, f"{key}.name", "a non-empty string", name)
    params = {p: _param(path, key, p, spec, table, directory if require_threshold else None)
              for p, spec in cls.parameters.items()}
    monitor = table.get("monitor", False)
    if not isinstance(monitor, bool):
        raise ConfigError(path, f"{key}.monitor", "true or false", monitor)
    threshold = table.get("threshold")
    if threshold is None and require_threshold:
        raise ConfigError(path, f"{key}.threshold", "a calibrated threshold (run `guard calibrate`)")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold) or threshold <= 0):
        raise ConfigError(path, f"{key}.threshold", "a positive finite number", threshold)
    return cls(name=name, threshold=None if threshold is None else float(threshold), directory=directory,
               monitor=monitor, **params)


def build_detectors(path: Path, tables, require_threshold: bool = True) -> list[Detector]:
    """Instantiate every [[detectors]] table of a model config (path: its config.toml), names unique.

    With require_threshold (serving), thresholds and artifact files must exist; without it
    (calibration), detectors are built to be fitted and calibrated.
    """
    detectors = [_build(path, f"detectors[{i}]", t, require_threshold, path.parent) for i, t in enumerate(tables)]
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
    return ([{"name": f"bit_depth_{b}", "type": BitDepthDetector.kind, "bits": b} for b in bit_depths or []]
            + [{"name": f"median_{s}x{s}", "type": MedianDetector.kind, "size": s} for s in medians or []])
