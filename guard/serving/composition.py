"""A served model's parts, built from its config once at load: the device, the detectors, the
backend (and the upstream it forwards to), the pipelines, the ensemble's combiner, thresholds that
hold on this host, and per-camera baselines. Also what `guard calibrate` checks without serving."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from guard.backends import build_backend
from guard.backends.base import Backend
from guard.backends.device import select_device
from guard.detection.baselines import Baselines, Factory
from guard.detection.detectors import Detector, build_detectors
from guard.detection.ensemble import Fisher
from guard.detection.pipeline import GuardPipeline
from guard.protocol.errors import ConfigError
from guard.serving.host_calibration import HostCalibration, calibrate_for_host
from guard.serving.model_config import ModelConfig
from guard.serving.repository import check_against_backend

log = logging.getLogger("guard.serving")


@dataclass(frozen=True)
class ModelParts:
    device: torch.device
    """Where the detectors run (the model's `device`)."""
    detectors: list[Detector]
    backend: Backend
    upstream: Backend | None
    """Answers the requests that pass the local check (remote forward_clean); None otherwise."""
    pipeline: GuardPipeline
    passthrough: GuardPipeline
    """The original rows only, no variants: what fail_open serves when the detectors fail."""
    combiner: Fisher | None
    host_calibration: HostCalibration
    baselines: Baselines | None

    def close(self) -> None:
        self.backend.close()
        if self.upstream is not None:
            self.upstream.close()


def compose(config: ModelConfig, backend: Backend | None = None, calibration_mode: str | None = None) -> ModelParts:
    """The model's parts, checked against each other; `backend` replaces the config's (already
    loaded and checked); calibration_mode overrides the model's [calibration] mode."""
    device = select_device(config.detection.device)
    detectors = [d.to(device) for d in _detectors(config)]
    if backend is None:
        backend = _backend(config, detectors)
        try:
            check_against_backend(config, backend.signature(), f"the model ({backend.description})")
        except ConfigError:
            backend.close()
            raise
    if backend.device is not None and backend.device.type != device.type:
        log.warning(
            "%s: the detectors run on %s and the backend on %s: every batch crosses between them "
            "(set the model's `device` and the backend's alike)",
            config.name,
            device,
            backend.device,
        )
    upstream = backend.forward_to
    pipeline = build_pipeline(config, backend, detectors, device)
    passthrough = build_pipeline(config, backend, [], device)
    try:
        combiner, host_calibration = calibrate_for_host(
            config,
            backend,
            detectors,
            load_combiner(config, detectors),
            device,
            lambda chosen: build_pipeline(config, backend, chosen, device),
            calibration_mode,
        )
        baselines = camera_baselines(config, detectors, host_calibration.factory)
    except BaseException:
        # A reload that fails leaves the old copy serving and may be retried: each failed try
        # must not keep a backend session and its threads.
        backend.close()
        if upstream is not None:
            upstream.close()
        raise
    return ModelParts(
        device, detectors, backend, upstream, pipeline, passthrough, combiner, host_calibration, baselines
    )


def check_loadable(config: ModelConfig) -> None:
    """What the server checks when it loads a model, without serving it: the backend loads and
    agrees with the config, every detector finds its threshold and artifacts, the ensemble its
    references. Raises ConfigError naming the file and key."""
    detectors = _detectors(config)
    backend = _backend(config, detectors)
    try:
        check_against_backend(config, backend.signature(), f"the model ({backend.description})")
        load_combiner(config, detectors)
    finally:
        backend.close()


def _detectors(config: ModelConfig) -> list[Detector]:
    return build_detectors(
        config.path,
        config.detection.detectors,
        input_kind=config.guarded_kind,
        output_kind=config.detection.output_kind,
    )


def _backend(config: ModelConfig, detectors: list[Detector]) -> Backend:
    """The config's backend, loaded, exposing the features the detectors that need them read."""
    return build_backend(config.spec, config.backend, tuple(d.name for d in detectors if d.needs_features))


def build_pipeline(
    config: ModelConfig, backend: Backend, detectors: list[Detector], device: torch.device
) -> GuardPipeline:
    preprocessor = None
    if config.preprocess is not None:
        source = next(s for s in config.inputs if s.name == config.preprocess.input)
        preprocessor = config.preprocess.build(source, load=True)
    d = config.detection
    return GuardPipeline(
        backend,
        detectors,
        guarded_input=d.guarded_input,
        logits_output=d.logits_output,
        output_names=[s.name for s in config.outputs],
        device=device,
        features_output=d.features_output,
        preprocessor=preprocessor,
        boxes=d.boxes,
    )


def load_combiner(config: ModelConfig, detectors: list[Detector]) -> Fisher | None:
    """The model's Fisher (or omnibus) combination, checked against its detectors; None for a union."""
    ensemble = config.detection.ensemble
    if ensemble.method == "union":
        return None
    if ensemble.threshold is None:  # read from a config that `guard calibrate` has yet to complete
        raise ConfigError(config.path, "ensemble.threshold", "a positive finite number (run `guard calibrate`)")
    try:
        combiner = Fisher.load(config.directory / ensemble.references, ensemble.threshold, ensemble.min_p_threshold)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: name the key, not a zipfile error
        raise ConfigError(
            config.path,
            "ensemble.references",
            f"a readable .npz of clean detector scores in "
            f"{config.directory} ({type(exc).__name__}: {exc}; re-run `guard calibrate`)",
            ensemble.references,
        ) from exc
    judges = sorted(d.name for d in detectors if not d.monitor)
    if sorted(combiner.references) != judges:
        raise ConfigError(
            config.path,
            "ensemble.references",
            f"clean scores of exactly the detectors {judges} (re-run `guard calibrate`)",
            sorted(combiner.references),
        )
    return combiner


def camera_baselines(config: ModelConfig, detectors: list[Detector], derived: Factory | None) -> Baselines | None:
    """The model's per-camera baselines ([cameras.baseline]), on the factory statistics derived at
    load when the host recalibrated, else the config's."""
    cameras = config.cameras
    if cameras.baseline is None:
        return None
    factory = derived or cameras.factory
    key = "cameras.baseline.factory"
    if factory is None:
        raise ConfigError(
            config.path,
            key,
            "each detector's clean [location, spread, reach] (run `guard calibrate` with the model's cameras)",
        )
    missing = sorted(set(cameras.baseline.judged([d.name for d in detectors])) - set(factory.location))
    if missing:
        raise ConfigError(
            config.path,
            key,
            f"an entry for every detector (missing {missing}; run `guard calibrate`)",
            sorted(factory.location),
        )
    return Baselines(cameras.baseline, factory, cameras.max_cameras, target=config.detection.target_fpr)
