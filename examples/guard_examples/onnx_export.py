"""ONNX export of a torch classifier, checked against ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
MAX_ABS_DIFF = 1e-4


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    names: tuple[str, str] = (INPUT_NAME, OUTPUT_NAME),
    quiet: tuple[str, ...] = (),
) -> Path:
    """Export `model` (eval mode) to `path` with a dynamic batch axis on its input and output
    (`names`); `quiet`: further exporter warnings (message patterns) known to be noise for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    source, target = names
    # The TorchScript exporter (dynamo=False) is chosen deliberately: it gives a small, stable
    # graph for a plain CNN, so its deprecation notice is only noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        for message in quiet:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[source],
            output_names=[target],
            dynamic_axes={source: {0: "batch"}, target: {0: "batch"}},
        )
    return path


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model on CPU and return its logits."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.array(x, dtype=np.float32))).numpy()


def verify_onnx(model: nn.Module, path: Path, x: np.ndarray, atol: float = MAX_ABS_DIFF) -> float:
    """Return max |torch - onnxruntime| over `x`; raise if it exceeds `atol`."""
    diff = float(np.max(np.abs(torch_logits(model, x) - onnx_logits(path, x))))
    if not diff <= atol:
        raise RuntimeError(f"ONNX Runtime output differs from torch by {diff:.3g} > {atol:g} ({path})")
    return diff
