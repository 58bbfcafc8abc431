"""`guard scan-model`: Neural Cleanse over a classifier, written up as scan.json / .md / .png."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from guard.tools.scans import findings
from guard.tools.scans.inputs import ScanTarget, file_sha256
from guard.tools.scans.neural_cleanse import CleanseOptions, CleanseResult, neural_cleanse

log = logging.getLogger("guard.tools.scans")

REPORT_NAME = "scan.json"
"""The model scan's JSON report; the repository gate reads this file."""


def scan_model(
    target: ScanTarget,
    x: np.ndarray,
    y: np.ndarray | None,
    out: Path,
    data_source: str,
    options: CleanseOptions | None = None,
    progress: bool = True,
) -> dict:
    import torch

    from guard.backends.onnx_torch import load_onnx_classifier

    options = options or CleanseOptions()
    model = load_onnx_classifier(target.onnx_path)
    start = time.perf_counter()
    with torch.inference_mode(False):
        result = neural_cleanse(model, x, y, target.num_classes, options, progress)
    seconds = time.perf_counter() - start
    flagged = result.flagged
    summary = {
        "scan": "neural_cleanse",
        "model": target.name,
        "onnx": str(target.onnx_path),
        "onnx_sha256": file_sha256(target.onnx_path),
        "verdict": "flagged" if flagged else "clean",
        "flagged_classes": flagged,
        "suspected_target": int(flagged[int(np.argmax(result.anomaly[flagged]))]) if flagged else None,
        "max_anomaly_index": float(result.anomaly.max()),
        "min_norm_class": int(np.argmin(result.mask_norms)),
        "min_norm_anomaly_index": float(result.anomaly[int(np.argmin(result.mask_norms))]),
        "mask_norms": result.mask_norms,
        "anomaly_indices": result.anomaly,
        "attack_success": result.success,
        "samples": int(len(x)),
        "data": data_source,
        "options": options.describe(),
        "seconds": round(seconds, 1),
        "method": "masks and patterns optimised through the ONNX graph run as torch (guard/scans/torch_model.py)",
    }
    out.mkdir(parents=True, exist_ok=True)
    findings.write_json(out / REPORT_NAME, summary)
    _plot(result, out / "trigger.png", target.name)
    findings.write_markdown(out / "scan.md", _markdown(summary))
    log.info(
        "scan-model %s: %s (flagged %s, max anomaly index %.2f) in %.0f s -> %s",
        target.name,
        summary["verdict"],
        flagged,
        summary["max_anomaly_index"],
        seconds,
        out / REPORT_NAME,
    )
    return summary


def _plot(result: CleanseResult, path: Path, name: str) -> Path:
    """Top: mask x pattern per class (what the trigger adds). Bottom: mask norms, flagged in red."""
    k = len(result.mask_norms)
    fig = findings.figure(1.2 * k, 4.2)
    grid = fig.add_gridspec(3, k)
    for c in range(k):
        ax = fig.add_subplot(grid[0, c])
        ax.imshow(
            (result.masks[c][None] * result.patterns[c]).mean(0), cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
        ax.set_title(
            f"{c}{' *' if c in result.flagged else ''}\n|m|={result.mask_norms[c]:.1f}",
            fontsize=7,
            color="red" if c in result.flagged else "black",
        )
        ax.axis("off")
    ax = fig.add_subplot(grid[1:, :])
    ax.bar(range(k), result.mask_norms, color=["red" if c in result.flagged else "gray" for c in range(k)])
    ax.axhline(np.median(result.mask_norms), color="black", lw=0.8, ls="--", label="median")
    ax.set_xticks(range(k))
    ax.set_xlabel("class")
    ax.set_ylabel("mask L1 norm")
    ax.legend(fontsize=7)
    fig.suptitle(f"{name}: reverse-engineered triggers (mask x pattern), * = flagged", fontsize=8)
    return findings.save(fig, path)


def _markdown(s: dict) -> list[str]:
    rows = [
        [
            c,
            s["mask_norms"][c],
            s["anomaly_indices"][c],
            s["attack_success"][c],
            "**flagged**" if c in s["flagged_classes"] else "",
        ]
        for c in range(len(s["mask_norms"]))
    ]
    return [
        f"# Model scan: {s['model']}",
        "",
        f"Verdict: **{s['verdict']}**"
        + (f" (suspected target class {s['suspected_target']})" if s["suspected_target"] is not None else ""),
        "",
        f"Neural Cleanse on {s['samples']} clean samples ({s['data']}); `{s['onnx']}` "
        f"(sha256 {s['onnx_sha256'][:12]}...), {s['seconds']} s. Classes below the median norm with "
        f"anomaly index > {s['options']['anomaly_threshold']} are flagged.",
        "",
        *findings.table(["class", "mask L1 norm", "anomaly index", "attack success", ""], rows),
        "",
        "![reverse-engineered triggers](trigger.png)",
    ]
