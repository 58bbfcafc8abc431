"""Detector registry: config `type` -> class, with each type's parameters validated on load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from guard.detectors.base import Detector, Outputs
from guard.detectors.squeezing import BitDepthDetector, MedianDetector
from guard.errors import ConfigError

# type -> (class, {parameter: (low, high)}); every parameter is an integer in [low, high].
REGISTRY: dict[str, tuple[type[Detector], dict[str, tuple[int, int]]]] = {
    BitDepthDetector.kind: (BitDepthDetector, {"bits": (1, 16)}),
    MedianDetector.kind: (MedianDetector, {"size": (1, 15)}),
}

__all__ = ["REGISTRY", "Detector", "Outputs", "build_detectors", "squeezer_tables"]


def _build(path: Path, key: str, table: dict[str, Any], require_threshold: bool) -> Detector:
    kind = table.get("type")
    if kind not in REGISTRY:
        raise ConfigError(path, f"{key}.type", "one of " + ", ".join(REGISTRY), kind)
    cls, params = REGISTRY[kind]
    extra = set(table) - {"name", "type", "threshold", *params}
    if extra:
        raise ConfigError(path, f"{key}.{sorted(extra)[0]}", f"a parameter of {kind} ({', '.join(params)})")
    name = table.get("name", kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(path, f"{key}.name", "a non-empty string", name)
    kwargs = {}
    for param, (low, high) in params.items():
        value = table.get(param)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(path, f"{key}.{param}", f"an integer in [{low}, {high}]", value)
        kwargs[param] = value
    threshold = table.get("threshold")
    if threshold is None and require_threshold:
        raise ConfigError(path, f"{key}.threshold", "a calibrated threshold (run `guard calibrate`)")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold) or threshold <= 0):
        raise ConfigError(path, f"{key}.threshold", "a positive finite number", threshold)
    return cls(name=name, threshold=None if threshold is None else float(threshold), **kwargs)


def build_detectors(path: Path, tables: tuple[dict[str, Any], ...] | list[dict[str, Any]],
                    require_threshold: bool = True) -> list[Detector]:
    """Instantiate every [[detectors]] table of a model config, names unique."""
    detectors = [_build(path, f"detectors[{i}]", t, require_threshold) for i, t in enumerate(tables)]
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise ConfigError(path, "detectors", "unique detector names", names)
    return detectors


def squeezer_tables(bit_depths: list[int] | None = None, medians: list[int] | None = None) -> list[dict[str, Any]]:
    """Squeezing detectors by parameter; the default is the paper's CIFAR-10/ImageNet pair
    (5-bit depth, 2x2 median), which keeps clean accuracy on natural images. (Its MNIST choice,
    1 bit, suits near-binary images only.)"""
    if bit_depths is None and medians is None:
        bit_depths, medians = [5], [2]
    return ([{"name": f"bit_depth_{b}", "type": BitDepthDetector.kind, "bits": b} for b in bit_depths or []]
            + [{"name": f"median_{s}x{s}", "type": MedianDetector.kind, "size": s} for s in medians or []])
