"""The sentiment model exported: ONNX (FP32) checked against torch and against padding, INT8 by
ONNX Runtime's dynamic quantization, and how far a row's answer depends on its batch
(guard_examples.sentiment builds with it).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from guard_examples.sentiment_net import MAX_TOKENS, SentimentNet, batches, model_dir, onnx_outputs, onnx_session

OPSET = 17
INT8_GATE = 0.01  # INT8 may lose at most one percentage point of accuracy against FP32, on every set
MAX_ABS_DIFF = 1e-4  # torch vs ONNX Runtime, and padded vs unpadded, on logits and embeddings
PADDING_TEXTS = 32


def export_onnx(model: SentimentNet, path: Path, example: tuple[np.ndarray, np.ndarray]) -> Path:
    """TorchScript exporter (dynamo=False): a plain encoder graph, batch and token axes dynamic."""
    model.eval()
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(a) for a in example),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits", "embedding"],
            dynamic_axes={**dynamic, "logits": {0: "batch"}, "embedding": {0: "batch"}},
        )
    return path


def padding_difference(session, ids: list[list[int]]) -> float:
    """Max |difference| in logits and embeddings between each text run alone (no padding) and all
    of them in one batch padded to MAX_TOKENS."""
    tokens = np.zeros((len(ids), MAX_TOKENS), np.int64)
    for j, row in enumerate(ids):
        tokens[j, : len(row)] = row
    padded = session.run(
        ["logits", "embedding"], {"input_ids": tokens, "attention_mask": (tokens != 0).astype(np.int64)}
    )
    worst = 0.0
    for j, row in enumerate(ids):
        alone = np.array([row], np.int64)
        single = session.run(["logits", "embedding"], {"input_ids": alone, "attention_mask": np.ones_like(alone)})
        worst = max(worst, *(float(np.abs(s[0] - p[j]).max()) for s, p in zip(single, padded)))
    return worst


def quantize_int8(fp32: Path, target: Path) -> Path:
    """ONNX Runtime dynamic quantization: INT8 weights per output channel, activations quantized per
    call (so a row's outputs depend a little on the rest of its batch: see `batch_agreement`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights: per-tensor ones stayed within a point on the reviews but lost five on the
    # tweets. The quantizer logs every tensor it skips on the root logger: hush it meanwhile.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(fp32, target, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return target


def check_onnx(session, ids: list[list[int]], torch_test: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, dict]:
    """ONNX Runtime against torch on the test texts, and padding invariance; raises past
    MAX_ABS_DIFF. Returns the ONNX logits of the test texts and the figures."""
    logits, embeddings = onnx_outputs(session, ids)
    figures = {
        "onnx_max_abs_logit_diff": float(np.abs(torch_test[0] - logits).max()),
        "onnx_max_abs_embedding_diff": float(np.abs(torch_test[1] - embeddings).max()),
        "onnx_argmax_agreement": float((torch_test[0].argmax(1) == logits.argmax(1)).mean()),
        "padding_max_abs_diff": padding_difference(session, ids[:PADDING_TEXTS]),
    }
    worst = max(figures["onnx_max_abs_logit_diff"], figures["onnx_max_abs_embedding_diff"])
    if worst > MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX Runtime differs from torch by {worst:.3g} > {MAX_ABS_DIFF}")
    if figures["padding_max_abs_diff"] > MAX_ABS_DIFF:
        raise RuntimeError(
            f"padding to {MAX_TOKENS} tokens changes the outputs by {figures['padding_max_abs_diff']:.3g}"
        )
    return logits, figures


def longest_tokens(id_lists) -> int:
    """The most tokens of any row; raises past MAX_TOKENS (the guard would reject the text)."""
    longest = max(len(row) for rows in id_lists for row in rows)
    if longest > MAX_TOKENS:
        raise RuntimeError(f"a review snippet has {longest} tokens, over the guard's {MAX_TOKENS}")
    return longest


def export_checked(
    model: SentimentNet, out: Path, test_ids: list[list[int]], torch_test: tuple[np.ndarray, np.ndarray]
) -> tuple[Path, np.ndarray, dict]:
    """The package's tokenizer and the FP32 `model.onnx` into `out`, checked against torch on the
    test texts (`check_onnx`): (the ONNX file, its test logits, the agreement figures)."""
    shutil.copyfile(model_dir() / "tokenizer.json", out / "tokenizer.json")
    _, *example = next(batches(test_ids[:2]))
    fp32 = export_onnx(model, out / "model.onnx", tuple(example))
    logits, agreement = check_onnx(onnx_session(fp32), test_ids, torch_test)
    return fp32, logits, agreement


def batch_agreement(session, ids: list[list[int]], batched_logits: np.ndarray) -> float:
    """The share of texts whose argmax is the same run alone as in their (padded) batch."""
    alone = [
        session.run(["logits"], {"input_ids": np.array([r]), "attention_mask": np.ones((1, len(r)), np.int64)})[0][0]
        for r in ids
    ]
    return float((np.array(alone).argmax(1) == batched_logits.argmax(1)).mean())
