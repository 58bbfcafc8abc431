"""The model repository: one directory per model (ONNX file, config.toml, detector artifacts)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from guard.config import ModelConfig, TensorSpec, load_model_config
from guard.errors import ConfigError
from guard.scans.gate import check_scan_gate

log = logging.getLogger("guard.repository")

# ONNX TensorProto element types -> v2 datatypes, for checking a config against its model.
_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.DOUBLE: "FP64", onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT8: "INT8", onnx.TensorProto.INT16: "INT16", onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32", onnx.TensorProto.UINT64: "UINT64", onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


def onnx_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX model; shapes exclude the batch dimension, -1 = symbolic."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def specs(values) -> list[TensorSpec]:
        result = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            result.append(TensorSpec(value.name, _ONNX_TYPES.get(tensor.elem_type, "UNKNOWN"), tuple(dims[1:])))
        return result

    return specs(model.graph.input), specs(model.graph.output)


def check_signature(config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec], source: str) -> None:
    """Fail with file and key when the config's tensors disagree with what `source` declares
    (shapes exclude the batch dimension; -1 there matches any size)."""
    path = config.directory / "config.toml"
    for key, declared, actual in (("inputs", config.inputs, inputs), ("outputs", config.outputs, outputs)):
        by_name = {spec.name: spec for spec in actual}
        for i, spec in enumerate(declared):
            found = by_name.get(spec.name)
            if found is None:
                raise ConfigError(path, f"{key}[{i}].name", f"an {key[:-1]} of {source} "
                                  f"({', '.join(by_name)})", spec.name)
            if found.datatype != spec.datatype:
                raise ConfigError(path, f"{key}[{i}].datatype", f"{found.datatype} as in {source}", spec.datatype)
            compatible = len(found.shape) == len(spec.shape) and all(
                m == -1 or m == d for m, d in zip(found.shape, spec.shape))
            if not compatible:
                raise ConfigError(path, f"{key}[{i}].shape",
                                  f"a shape compatible with {source} ({list(found.shape)})", list(spec.shape))
    if key_missing := [s.name for s in inputs if s.name not in {d.name for d in config.inputs}]:
        raise ConfigError(path, "inputs", f"every input of {source} declared (missing {key_missing})")


def check_against_model(config: ModelConfig) -> None:
    """Fail with file and key when the config's tensors disagree with the ONNX model's."""
    if not config.runs_locally:
        return  # the upstream's metadata is checked when the remote backend loads
    path = config.directory / "config.toml"
    inputs, outputs = onnx_signature(config.model_file)
    check_signature(config, inputs, outputs, f"the model ({config.model_file.name})")
    if config.features_output is not None and config.features_output not in {s.name for s in outputs}:
        raise ConfigError(path, "features_output", f"an output of {config.model_file.name} "
                          f"({', '.join(s.name for s in outputs)})", config.features_output)


def load_repository(root: Path) -> list[ModelConfig]:
    """Validated configs of every model directory under root (hidden directories skipped)."""
    if not root.is_dir():
        raise ConfigError(root, "(repository)", "an existing directory of model directories")
    configs = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = load_model_config(directory)
        check_against_model(config)
        check_scan_gate(config)
        configs.append(config)
    if not configs:
        raise ConfigError(root, "(repository)", "at least one model directory with a config.toml")
    log.info("repository %s: %s", root, ", ".join(c.name for c in configs))
    return configs
