"""Model cards for every model the recipes produce, written from measured metrics, never by hand."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from guard_examples.digits_data import SPLIT_SEED, split_indices

DATA = "scikit-learn `load_digits()`: 1,797 real 8x8 grayscale handwritten digits (pixel values 0..16), 10 classes."
PREPROCESSING = (
    "Divide by 16, then upsample bilinearly to 16x16 with `torch.nn.functional.interpolate("
    'x, size=(16, 16), mode="bilinear", align_corners=False)`. Input FP32 `[N, 1, 16, 16]` '
    "in [0, 1] (ONNX input `input`, output `logits` `[N, 10]`, dynamic batch axis)."
)


def split_section() -> str:
    sizes = {name: len(idx) for name, idx in split_indices().items()}
    return (
        f"Stratified, seed `{SPLIT_SEED}` (`examples/guard_examples/digits_data.py`): train {sizes['train']}, "
        f"calibration {sizes['calibration']} (detector thresholds only), test {sizes['test']} "
        "(held out: nothing trains or calibrates on it)."
    )


def cpu_latency(onnx_path: Path, batch_sizes: tuple[int, ...] = (1, 32), repeats: int = 200) -> dict[int, float]:
    """Median milliseconds per call of ONNX Runtime on one CPU thread, per batch size."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    result = {}
    for batch in batch_sizes:
        x = np.random.default_rng(0).random((batch, 1, 16, 16), dtype=np.float32)
        for _ in range(20):
            session.run(None, {name: x})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - start)
        result[batch] = float(np.median(times) * 1e3)
    return result


def size_and_latency(onnx_path: Path) -> str:
    latency = cpu_latency(onnx_path)
    return (
        f"`{onnx_path.name}`: {onnx_path.stat().st_size:,} bytes. CPU latency (ONNX Runtime, one "
        "thread, median of 200 calls): "
        + ", ".join(f"batch {b}: {ms:.3f} ms" for b, ms in latency.items())
        + ". Latency is machine-dependent; rerun the recipe to measure it here."
    )


def write_card(directory: Path, title: str, summary: str, sections: dict[str, str]) -> Path:
    """MODEL_CARD.md with Data, Preprocessing and Split first, then the recipe's own sections."""
    directory.mkdir(parents=True, exist_ok=True)
    body = {"Data": DATA, "Preprocessing": PREPROCESSING, "Split": split_section(), **sections}
    text = f"# {title}\n\n{summary.strip()}\n\n" + "\n".join(f"## {k}\n\n{v.strip()}\n" for k, v in body.items())
    path = directory / "MODEL_CARD.md"
    path.write_text(text, encoding="utf-8")
    return path


def replace_section(directory: Path, title: str, text: str) -> Path:
    """Rewrite one `## title` section of an existing MODEL_CARD.md, leaving the others as they are."""
    path = directory / "MODEL_CARD.md"
    card = path.read_text(encoding="utf-8")
    head, marker, rest = card.partition(f"## {title}\n")
    if not marker:
        raise ValueError(f"{path} has no '## {title}' section")
    _, next_marker, tail = rest.partition("\n## ")
    path.write_text(f"{head}{marker}\n{text.strip()}\n" + (f"\n## {tail}" if next_marker else ""), encoding="utf-8")
    return path
