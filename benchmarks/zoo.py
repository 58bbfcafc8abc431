"""Surveillance-sized models for the benchmarks: torchvision classifiers at 3x224x224, exported
to ONNX in FP32 and quantized to INT8 (static, QDQ), cached on disk.

Weights are torchvision's random initialisation (seeded, `weights=None`): nothing is downloaded,
so these files are for latency only, never accuracy. The heads have CLASSES outputs, as a
surveillance classifier would (person, vehicle, ...); the backbone, where the compute is, is torchvision's.
At initialisation BatchNorm's running statistics (mean 0, variance 1) do not match the random
weights and the logits vanish (about 1e-9: every detector score would be 0), so those statistics
are re-estimated on sample-photo crops before export, and the last layer is scaled so the logits
spread like a trained model's (standard deviation about 2); no weight is trained. The ImageNet
normalisation is folded into the graph, so the input is an image in [0, 1] like the guard's
squeezers expect.

    python -m benchmarks.zoo [--cache reports/bench/cache]     # builds every model once
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("benchmarks.zoo")
ARCHITECTURES = ("mobilenet_v3_small", "resnet18")
PRECISIONS = ("fp32", "int8")
SIZE = 224
CLASSES = 10
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sample_crops(count: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """`count` seeded crops of scikit-learn's two sample photos, flipped at random and resized to
    size x size: real images for INT8 calibration and the guard's thresholds. [N, 3, size, size] in [0, 1]."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.asarray(p, np.float32) / 255.0).permute(2, 0, 1) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[1:]
        side = int(rng.integers(size // 2, min(height, width) + 1))
        top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
        crop = photo[:, top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop.flip(2)
        crops.append(
            torch.nn.functional.interpolate(
                crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[0]
        )
    return torch.stack(crops).clamp(0.0, 1.0).numpy()


class _Normalised(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def export_fp32(architecture: str, out: Path, seed: int = 0) -> Path:
    import torchvision

    torch.manual_seed(seed)
    model = _Normalised(getattr(torchvision.models, architecture)(weights=None, num_classes=CLASSES))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    crops = torch.from_numpy(sample_crops(64, seed=seed + 10))
    with torch.no_grad():
        model.train()
        for batch in crops.split(16):
            model(batch)
        model.eval()
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.mul_(2.0 / model(crops[:16]).std().clamp_min(1e-12))
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            model,
            torch.rand(1, 3, SIZE, SIZE),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return out


def quantize_int8(fp32: Path, out: Path, images: np.ndarray) -> Path:
    """ONNX Runtime static quantization, QDQ, per-channel INT8 weights and UINT8 activations, as
    the shipped digits model (examples/guard_examples/quantize.py)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{"input": np.ascontiguousarray(images[i : i + 8])} for i in range(0, len(images), 8)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Images(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    return out


def model_file(cache: Path, architecture: str, precision: str, calibration_images: int = 32) -> Path:
    """The cached ONNX file of `architecture` in `precision`, built on first use."""
    if architecture not in ARCHITECTURES or precision not in PRECISIONS:
        raise ValueError(f"unknown model {architecture}/{precision}")
    fp32 = cache / f"{architecture}_fp32.onnx"
    if not fp32.exists():
        log.info("exporting %s (random weights) to %s", architecture, fp32)
        export_fp32(architecture, fp32.with_suffix(".tmp"))
        fp32.with_suffix(".tmp").rename(fp32)
    if precision == "fp32":
        return fp32
    int8 = cache / f"{architecture}_int8.onnx"
    if not int8.exists():
        log.info("quantizing %s to INT8 on %d sample-photo crops", architecture, calibration_images)
        quantize_int8(fp32, int8.with_suffix(".tmp"), sample_crops(calibration_images, seed=1))
        int8.with_suffix(".tmp").rename(int8)
    return int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("reports/bench/cache"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for architecture in ARCHITECTURES:
        for precision in PRECISIONS:
            print(model_file(args.cache, architecture, precision))


if __name__ == "__main__":
    main()
