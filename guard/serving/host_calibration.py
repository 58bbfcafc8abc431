"""At load: are the stored thresholds valid on this host? Calibration records the runtime
fingerprint it was derived under (guard.detection.calibration.fingerprint). Where this host's
differs, the model's calibration mode decides: `recalibrate` derives thresholds and the ensemble's
statistics again from the shipped clean references, with the code `guard calibrate` ran, before
the model reports ready; `strict` refuses to load; `trust` serves the stored ones, and says so.

What a host's numerics decide fails one model, never the server: a recalibration that raises, or a
strict refusal, fails that model's load (HostBound; guard.serving.reload logs it, counts it and
names it in the repository index) and every other model serves. A model without detectors has
no thresholds, so nothing about it depends on the host.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from guard.backends.base import Backend
from guard.detection.baselines import Factory
from guard.detection.calibration.derive import DecisionSettings, PipelineFor, derive
from guard.detection.calibration.fingerprint import fingerprint_id, foreign_host, runtime_fingerprint, same_runtime
from guard.detection.calibration.references import References
from guard.detection.detectors import Detector
from guard.detection.ensemble import Fisher
from guard.protocol.errors import ConfigError, GuardError
from guard.serving.model_config import ModelConfig

log = logging.getLogger("guard.serving")


class HostBound(Exception):
    """A failure this host's runtime caused: it fails the model's load, not the server's start."""


class RecalibrationFailed(GuardError, HostBound):
    """Deriving the thresholds on this host raised: the model cannot be checked here, so it is not
    served (a request the guard could not check is not forwarded)."""

    status = "UNAVAILABLE"


class ForeignRuntimeRefused(ConfigError, HostBound):
    """Calibration mode strict, and the thresholds were derived under another runtime."""


@dataclass(frozen=True)
class HostCalibration:
    fingerprint: str
    """This host's runtime fingerprint id."""
    recalibrated: str
    """"true" (derived here), "false" (stored thresholds hold here), "trusted" (stored, on a
    different runtime, by choice or for want of references) or "skipped" (the backend was not
    ready to score the references)."""
    clean_flag_rate: float | None = None
    """Share of the references the decision flags, when derived here."""
    seconds: float = 0.0
    factory: Factory | None = None
    """Per-camera baselines' factory statistics, when derived here (else the config's hold)."""


def calibrate_for_host(
    config: ModelConfig,
    backend: Backend,
    detectors: list[Detector],
    combiner: Fisher | None,
    device: torch.device,
    pipeline_for: PipelineFor,
    mode: str | None = None,
) -> tuple[Fisher | None, HostCalibration]:
    """The combiner to serve with (detector thresholds are updated in place when re-derived)."""
    settings = config.calibration
    mode = mode or settings.mode
    host = fingerprint_id(runtime_fingerprint(backend.description, device))
    if not detectors or same_runtime(settings.fingerprint, host):
        return combiner, HostCalibration(host, "false")
    stored = settings.fingerprint or "unknown"
    if foreign_host():
        log.info("%s: every stored fingerprint counts as foreign (GUARD_FOREIGN_HOST)", config.name)
    if mode == "strict":
        raise ForeignRuntimeRefused(
            config.path,
            "calibration.fingerprint",
            "thresholds derived under this host's "
            f"runtime {host} (calibration mode strict; run `guard calibrate` here, or serve "
            "with --calibration recalibrate)",
            stored,
        )
    if mode == "trust" or settings.references is None:
        why = "calibration mode trust" if mode == "trust" else "the model ships no references to derive them from"
        log.warning(
            "%s: serving thresholds derived under runtime %s on runtime %s (%s); the clean flag rate "
            "may differ from its target",
            config.name,
            stored,
            host,
            why,
        )
        return combiner, HostCalibration(host, "trusted")
    if not backend.ready:
        log.warning(
            "%s: backend not ready to score its references; serving thresholds derived under %s", config.name, stored
        )
        return combiner, HostCalibration(host, "skipped")
    start = time.perf_counter()
    detection = config.detection
    try:
        references = References.load(config.directory / settings.references, config.path)
        decision = derive(
            pipeline_for,
            detectors,
            references,
            DecisionSettings(
                detection.ensemble.method,
                detection.target_fpr,
                settings.confidence,
                settings.folds,
                settings.seed,
                config.cameras.baseline,
            ),
        )
    except Exception as exc:  # noqa: BLE001 - whatever it was, this model cannot be checked here
        cause = exc.message if isinstance(exc, GuardError) else f"{type(exc).__name__}: {exc}"
        raise RecalibrationFailed(
            f"{config.path}: recalibrating on runtime {host} (stored thresholds derived "
            f"under {stored}) failed: {cause}; the model is not served (`guard serve "
            "--calibration trust` serves the stored thresholds instead)"
        ) from exc
    seconds = time.perf_counter() - start
    for detector in detectors:
        old, detector.threshold = detector.threshold, decision.thresholds[detector.name]
        log.info("%s: %s threshold %.6g -> %.6g", config.name, detector.name, old, detector.threshold)
    if decision.combiner is not None and combiner is not None:
        log.info("%s: ensemble threshold %.6g -> %.6g", config.name, combiner.threshold, decision.combiner.threshold)
    log.info(
        "%s: recalibrated on runtime %s (calibrated under %s) from %d references in %.2f s; clean flag rate "
        "on them %.4f (target %.4f)",
        config.name,
        host,
        stored,
        references.rows,
        seconds,
        decision.calibration_fpr,
        detection.target_fpr,
    )
    return decision.combiner, HostCalibration(host, "true", decision.calibration_fpr, seconds, decision.factory)
