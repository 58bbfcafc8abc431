"""Gateway repositories for the benchmark: one per model, holding one entry per guard configuration,
so a single `guard serve` process serves them all and each request names the configuration.

- `passthrough`: no detectors (the gateway's transport, batching and backend only);
- `squeeze`: the feature-squeezing detectors only;
- `full_flag` / `full_enforce`: the full detector ensemble under policy flag / enforce.

Every configuration derives from one calibrated `full` entry (real thresholds; the derived ones
keep the thresholds the ensemble was calibrated with, which is all latency needs).
"""

from __future__ import annotations

import logging
import shutil
import tomllib
from pathlib import Path

import numpy as np
import tomlkit

from guard.detection.detectors import REGISTRY, squeezer_tables
from guard.tools.evaluation.tensor_data import read_samples

log = logging.getLogger("benchmarks.repositories")
ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "guard_examples" / "repository" / "digits"
DIGITS_DATA = ROOT / "examples" / "guard_examples" / "data"
CONFIGURATIONS = ("passthrough", "squeeze", "full_flag", "full_enforce")
SQUEEZERS = ("squeeze_bit_depth", "squeeze_median")


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a digits split, read from the demo's .npz files (the benchmarks run the library on
    the demo's files; they import no example code, as the library's tests do not)."""
    samples = read_samples(DIGITS_DATA / f"{name}.npz")
    return samples.x, samples.y


def _derive(full: Path, target: Path, name: str, keep: tuple[str, ...] | None, policy: str) -> None:
    """Copy the calibrated entry `full` to `target/name`, keeping detectors whose type is in `keep`
    (None keeps all), and set the policy."""
    entry = target / name
    shutil.copytree(full, entry, dirs_exist_ok=True)
    config = tomllib.loads((full / "config.toml").read_text())
    config.update(name=name, policy=policy)
    detectors = [d for d in config.get("detectors", []) if keep is None or d["type"] in keep]
    config["detectors"] = detectors
    if not any(REGISTRY[d["type"]].needs_features for d in detectors):
        config.pop("features_output", None)  # nothing reads the features: do not ask for them
    ensemble = config.get("ensemble", {})
    if ensemble.get("method") in ("fisher", "omnibus"):
        if not detectors:
            config.pop("ensemble")
        else:  # the stored references are the calibration scores: refit the threshold on the kept ones
            from guard.detection.ensemble import Fisher

            kept = [d["name"] for d in detectors if not d.get("monitor")]
            stored = Fisher.load(full / ensemble["references"], ensemble["threshold"])
            refit = Fisher.fit(
                {k: stored.references[k] for k in kept},
                config.get("target_fpr", 0.05),
                omnibus=ensemble["method"] == "omnibus",
            )
            refit.save(entry / ensemble["references"])
            ensemble["threshold"] = refit.threshold
            if refit.min_p_threshold is not None:
                ensemble["min_p_threshold"] = refit.min_p_threshold
    if not detectors:
        config.pop("detectors")
    (entry / "config.toml").write_text(
        f"# Benchmark configuration {name!r}, derived from {full.name}.\n" + tomlkit.dumps(config)
    )


def build(full: Path, target: Path) -> Path:
    """Write every configuration of CONFIGURATIONS under `target` from the calibrated entry `full`."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    _derive(full, target, "passthrough", (), "flag")
    _derive(full, target, "squeeze", SQUEEZERS, "flag")
    _derive(full, target, "full_flag", None, "flag")
    _derive(full, target, "full_enforce", None, "enforce")
    return target


def calibrated_full(onnx_path: Path, cache: Path, samples: int) -> Path:
    """The `full` entry of a torchvision model: the default squeezers (5-bit depth, 2x2 median) and
    the Mahalanobis feature detector, calibrated on sample-photo crops; cached next to the model.

    With random weights the predicted classes say nothing, so the Mahalanobis class means are fitted
    on crops labelled round-robin (every class needs members); thresholds come from other crops."""
    import numpy as np

    from benchmarks.zoo import CLASSES, sample_crops
    from guard.tools.calibrate import calibrate_model

    repository = cache / "calibrated"
    entry = repository / f"{onnx_path.stem}_n{samples}"
    if (entry / "config.toml").exists() and (entry / "model.onnx").stat().st_mtime >= onnx_path.stat().st_mtime:
        return entry
    log.info("calibrating the guard for %s on %d sample-photo crops", onnx_path.stem, samples)
    fit = sample_crops(4 * CLASSES, seed=3)
    calibrate_model(
        onnx_path,
        entry.name,
        repository,
        sample_crops(samples, seed=2),
        policy="flag",
        detectors=squeezer_tables() + [{"name": "mahalanobis", "type": "mahalanobis"}],
        fit_data=(fit, np.arange(len(fit)) % CLASSES),
    )
    return entry


def digits_full() -> Path:
    """The shipped demo entry: INT8 digits with two squeezers, Mahalanobis and the detector network."""
    return DIGITS
