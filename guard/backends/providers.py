"""Choose ONNX Runtime execution providers that actually load, without error spam on CPU hosts.

onnxruntime-gpu lists the TensorRT and CUDA providers even on a host without a GPU, and asking
for them prints long errors before falling back to CPU. So a GPU provider is only requested when
torch sees a CUDA device and a probe session on a one-node model really runs on it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import onnxruntime as ort

log = logging.getLogger("guard.backends")

PROVIDERS = ("tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class TensorRTConfig:
    fp16: bool = False
    int8: bool = False
    engine_cache_dir: str = ""
    """Where built engines are cached across restarts: a directory inside the model directory ("" = no cache)."""


ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@functools.cache
def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@functools.cache
def provider_loads(ort_name: str) -> bool:
    """True when a session on a one-node model really runs on this provider."""
    if ort_name == ORT_NAMES["cpu"]:
        return True
    if ort_name not in ort.get_available_providers():
        return False
    try:
        import torch

        if not torch.cuda.is_available():
            return False
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(_probe_model(), options, providers=[ort_name])
    except Exception as exc:  # noqa: BLE001 - any failure means "does not load here"
        log.info("execution provider %s does not load: %s", ort_name, exc)
        return False
    return session.get_providers()[0] == ort_name


def provider_options(name: str, tensorrt: TensorRTConfig) -> dict[str, str]:
    if name != "tensorrt":
        return {}
    options = {"trt_fp16_enable": str(tensorrt.fp16), "trt_int8_enable": str(tensorrt.int8)}
    if tensorrt.engine_cache_dir:
        options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": tensorrt.engine_cache_dir}
    return options


def select_providers(preference: tuple[str, ...], tensorrt: TensorRTConfig) -> list[tuple[str, dict[str, str]]]:
    """The preferred providers that load, in order, always ending with CPU as the fallback."""
    chosen = [
        (ORT_NAMES[p], provider_options(p, tensorrt)) for p in preference if p != "cpu" and provider_loads(ORT_NAMES[p])
    ]
    chosen.append((ORT_NAMES["cpu"], {}))
    return chosen
