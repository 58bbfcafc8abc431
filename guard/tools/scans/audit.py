"""`guard audit`: accuracy under small changes of the inputs and of the weights.

- Gaussian input noise at several sigma (clipped to the input range);
- common corruptions from torchvision's functional transforms (blur, contrast, brightness, JPEG),
  skipped with a note when torchvision is not installed;
- PGD (L-inf, random start) at several eps, with gradients through the ONNX graph run as torch;
- random relative weight noise w * (1 + s * N(0, 1)) at several scales s, averaged over draws.

All accuracies come from the torch interpreter of the ONNX file; the report also gives its
agreement with ONNX Runtime on the clean samples (exact for FP32; for INT8 QDQ, ONNX Runtime's
fused integer kernels round differently from the reference QDQ semantics the interpreter follows).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from guard.tools.evaluation.pgd import untargeted_pgd
from guard.tools.scans import findings
from guard.tools.scans.inputs import ScanTarget

log = logging.getLogger("guard.tools.scans")


@dataclass(frozen=True)
class AuditOptions:
    noise_sigmas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    pgd_eps: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    pgd_steps: int = 20
    weight_scales: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3)
    weight_draws: int = 5
    value_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0

    def describe(self) -> dict:
        return asdict(self)


def _accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _corruptions(x: torch.Tensor, low: float, high: float) -> dict[str, torch.Tensor] | None:
    import warnings

    try:
        from torchvision.transforms.v2 import functional as TF
    except ImportError:
        return None
    unit = (x - low) / (high - low)  # torchvision's float ops assume [0, 1]
    as_uint8 = (unit * 255).round().to(torch.uint8)
    out = {
        "gaussian_blur_3x3_sigma1": TF.gaussian_blur(unit, [3, 3], [1.0, 1.0]),
        "contrast_0.5": TF.adjust_contrast(unit.expand(-1, 3, -1, -1), 0.5)[:, :1]
        if unit.shape[1] == 1
        else TF.adjust_contrast(unit, 0.5),
        "brightness_1.5": TF.adjust_brightness(unit, 1.5),
    }
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs; JPEG still works
        warnings.simplefilter("ignore", DeprecationWarning)
        out["jpeg_quality_30"] = TF.jpeg(as_uint8, 30).float() / 255
    return {name: (v.clamp(0, 1) * (high - low) + low).float() for name, v in out.items()}


def pgd_accuracy(
    model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, low: float, high: float, gen: torch.Generator
) -> float:
    scale = high - low
    adv = untargeted_pgd(_Scaled(model, low, scale), (x - low) / scale, y, eps, steps, 2.5 * eps / steps, gen=gen)
    return _accuracy(model, adv * scale + low, y)


class _Scaled(torch.nn.Module):
    """Presents a model on [low, high] inputs as one on [0, 1], where PGD's eps is defined."""

    def __init__(self, model, low: float, scale: float):
        super().__init__()
        self.model, self.low, self.scale = model, low, scale

    def forward(self, x):
        return self.model(x * self.scale + self.low)


def audit(
    target: ScanTarget,
    x: np.ndarray,
    y: np.ndarray,
    out: Path,
    data_source: str,
    options: AuditOptions = AuditOptions(),
    progress: bool = True,
) -> dict:
    import onnxruntime as ort
    from tqdm import tqdm

    from guard.backends.onnx_torch import load_onnx_classifier

    model = load_onnx_classifier(target.onnx_path)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y))
    low, high = options.value_range
    gen = torch.Generator().manual_seed(options.seed)
    session = ort.InferenceSession(str(target.onnx_path), providers=["CPUExecutionProvider"])
    ort_pred = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: np.asarray(xt)})[0].argmax(1)
    with torch.no_grad():
        agreement = float(np.mean(model(xt).argmax(1).numpy() == ort_pred))
    rows: list[tuple[str, str | float, float, float]] = []  # (family, level, accuracy, std)
    clean = _accuracy(model, xt, yt)
    rows.append(("clean", "", clean, 0.0))
    steps = tqdm(
        total=len(options.noise_sigmas) + 1 + len(options.pgd_eps) + len(options.weight_scales),
        desc=f"audit {target.name}",
        disable=not progress,
    )
    for sigma in options.noise_sigmas:
        noisy = (xt + sigma * (high - low) * torch.randn(xt.shape, generator=gen)).clamp(low, high)
        rows.append(("gaussian_noise", sigma, _accuracy(model, noisy, yt), 0.0))
        steps.update()
    corrupted = _corruptions(xt, low, high) if xt.dim() == 4 else None
    for name, images in (corrupted or {}).items():
        rows.append(("corruption", name, _accuracy(model, images, yt), 0.0))
    steps.update()
    for eps in options.pgd_eps:
        rows.append(("pgd", eps, pgd_accuracy(model, xt, yt, eps, options.pgd_steps, low, high, gen), 0.0))
        steps.update()
    for scale in options.weight_scales:
        accs = [_accuracy(model.perturbed(scale, gen), xt, yt) for _ in range(options.weight_draws)]
        rows.append(("weight_noise", scale, float(np.mean(accs)), float(np.std(accs))))
        steps.update()
    steps.close()
    summary = {
        "scan": "stability_audit",
        "model": target.name,
        "onnx": str(target.onnx_path),
        "data": data_source,
        "samples": int(len(y)),
        "interpreter_onnxruntime_agreement": agreement,
        "corruptions": "torchvision.transforms.v2.functional" if corrupted is not None else "skipped (no torchvision)",
        "results": [{"family": f, "level": lvl, "accuracy": a, "std": s} for f, lvl, a, s in rows],
        "options": options.describe(),
    }
    out.mkdir(parents=True, exist_ok=True)
    findings.write_json(out / "audit.json", summary)
    _plot(summary, out / "audit.png")
    findings.write_markdown(
        out / "audit.md",
        [
            f"# Stability audit: {target.name}",
            "",
            f"{summary['samples']} samples ({data_source}); accuracy from the ONNX graph run as torch "
            f"(agrees with ONNX Runtime on {agreement:.2%} of clean predictions). PGD: L-inf, "
            f"{options.pgd_steps} steps, random start. Weight noise: mean (std) over {options.weight_draws} draws.",
            "",
            *findings.table(["family", "level", "accuracy", "std"], [list(r) for r in rows]),
            "",
            "![audit](audit.png)",
        ],
    )
    log.info("audit %s: clean %.4f -> %s", target.name, clean, out / "audit.json")
    return summary


def _plot(summary: dict, path: Path) -> Path:
    fig = findings.figure(12, 3)
    axes = fig.subplots(1, 4)
    results = summary["results"]
    clean = results[0]["accuracy"]
    for ax, (family, xlabel) in zip(
        axes,
        (
            ("gaussian_noise", "input noise sigma"),
            ("pgd", "PGD eps (L-inf)"),
            ("weight_noise", "relative weight noise"),
        ),
    ):
        rs = [r for r in results if r["family"] == family]
        ax.errorbar(
            [0] + [r["level"] for r in rs],
            [clean] + [r["accuracy"] for r in rs],
            yerr=[0] + [r["std"] for r in rs],
            marker="o",
            ms=3,
        )
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
    rs = [r for r in results if r["family"] == "corruption"]
    ax = axes[3]
    ax.barh(["clean"] + [r["level"] for r in rs], [clean] + [r["accuracy"] for r in rs], color="gray")
    ax.set_xlim(0, 1.02)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_xlabel("accuracy")
    fig.suptitle(f"{summary['model']}: stability audit", fontsize=9)
    return findings.save(fig, path)
