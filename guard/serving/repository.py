"""The model repository: one directory per model (config.toml, the model file, detector artifacts).

`load_repository` reads and validates every model's config and applies the scan gate; the model
file itself is checked against its config when its backend loads (guard.serving.composition), since
only the backend knows what it runs (an ONNX graph, an upstream's metadata).
"""

from __future__ import annotations

import logging
from pathlib import Path

from guard.protocol.errors import ConfigError
from guard.protocol.spec import check_signature
from guard.serving.model_config import ModelConfig, load_model_config
from guard.serving.scan_gate import check_scan_gate

log = logging.getLogger("guard.serving")


def check_against_backend(config: ModelConfig, signature, source: str) -> None:
    """Fail with file and key when the config's tensors disagree with what the backend declares,
    including the internal features output detectors read."""
    if signature is None:
        return  # not known yet: a remote upstream checks its metadata when it answers
    inputs, outputs = signature
    spec = config.spec
    check_signature(config.path, {"inputs": spec.inputs, "outputs": spec.outputs}, inputs, outputs, source)
    features = config.detection.features_output
    if features is not None and features not in {s.name for s in outputs}:
        raise ConfigError(
            config.path, "features_output", f"an output of {source} ({', '.join(s.name for s in outputs)})", features
        )


def load_repository(root: Path) -> list[ModelConfig]:
    """Validated configs of every model directory under root (hidden directories skipped)."""
    if not root.is_dir():
        raise ConfigError(root, "(repository)", "an existing directory of model directories")
    configs = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = load_model_config(directory)
        check_scan_gate(config)
        configs.append(config)
    if not configs:
        raise ConfigError(root, "(repository)", "at least one model directory with a config.toml")
    log.info("repository %s: %s", root, ", ".join(c.name for c in configs))
    return configs
