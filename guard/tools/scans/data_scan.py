"""`guard scan-data`: rank a labelled training set by how likely each sample is poisoned.

Both methods read the model's penultimate features (the input of the classification head,
`guard.backends.onnx_graph.find_feature_tensor`); for a text model directory, whose training set
is texts, its features_output (the sentence embedding) through the guard's own tokenizing
pipeline. The report lists, per method, the top-ranked samples within a budget of 1.5x the poison
rate (known poison count, else the assumed rate), grouped by class, and precision/recall against
known poisoned indices when given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from guard.tools.scans import findings
from guard.tools.scans.clustering import activation_clustering
from guard.tools.scans.inputs import ScanTarget
from guard.tools.scans.spectral import spectral_scores

log = logging.getLogger("guard.tools.scans")

BUDGET_FACTOR = 1.5


def penultimate_features(onnx_path: Path, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    import onnx
    import torch

    from guard.backends.onnx_graph import find_feature_tensor
    from guard.backends.onnx_torch import load_onnx_classifier

    model = load_onnx_classifier(onnx_path)
    name = find_feature_tensor(onnx.load(str(onnx_path)))
    with torch.no_grad():
        return np.concatenate(
            [
                model.features(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])), name).numpy()
                for i in range(0, len(x), batch_size)
            ]
        )


def text_features(directory: Path, texts: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """A text model's features_output (its sentence embedding) for each text, through the guard's
    own pipeline: the model's tokenizer, padding and backend, as the server runs them."""
    import torch

    from guard.backends import build_backend
    from guard.detection.calibration.derive import chunks
    from guard.detection.calibration.references import References
    from guard.protocol.errors import ConfigError
    from guard.serving.composition import build_pipeline
    from guard.serving.model_config import load_model_config
    from guard.tools.clean_data import utf8_rows

    config = load_model_config(directory, calibrated=False)
    features = config.detection.features_output
    if features is None:
        raise ConfigError(config.path, "features_output", "the model output a text scan reads (its sentence embedding)")
    backend = build_backend(config.spec, config.backend, ("scan",))
    try:
        pipeline = build_pipeline(config, backend, [], torch.device("cpu"))
        samples = References({config.inputs[0].name: utf8_rows(texts, config.inputs[0])})
        with torch.inference_mode():
            parts = [pipeline.outputs(pipeline.batch([c]), [features])[features] for c in chunks(samples, batch_size)]
    finally:
        backend.close()
    return np.concatenate(parts).reshape(len(texts), -1)


def model_features(target: ScanTarget, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "U":
        assert target.directory is not None  # load_npz takes texts only for a model directory
        return text_features(target.directory, x)
    return penultimate_features(target.onnx_path, x)


def ranking_summary(scores: np.ndarray, labels: np.ndarray, budget: int, poisoned: np.ndarray | None) -> dict:
    order = np.argsort(-scores, kind="stable")
    top = order[:budget]
    result = {
        "top": top,
        "top_by_class": {int(c): np.sort(top[labels[top] == c]).tolist() for c in np.unique(labels[top])},
    }
    if poisoned is not None and len(poisoned):
        hit = np.isin(top, poisoned)
        result.update(
            precision=float(hit.mean()) if budget else 0.0,
            recall=float(hit.sum() / len(poisoned)),
            found=int(hit.sum()),
        )
    return result


def scan_data(
    target: ScanTarget,
    x: np.ndarray,
    y: np.ndarray,
    out: Path,
    data_source: str,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    poisoned: np.ndarray | None = None,
    assumed_rate: float = 0.1,
    seed: int = 0,
) -> dict:
    features = model_features(target, x)
    ref_f, ref_y = (model_features(target, reference[0]), reference[1]) if reference else (None, None)
    rate = len(poisoned) / len(y) if poisoned is not None else assumed_rate
    budget = int(round(BUDGET_FACTOR * rate * len(y)))
    spectral = spectral_scores(features, y, ref_f, ref_y)
    clusters, summaries = activation_clustering(features, y, ref_f, ref_y, seed=seed)
    methods = {
        "spectral": ranking_summary(spectral, y, budget, poisoned),
        "activation_clustering": ranking_summary(clusters, y, budget, poisoned),
    }
    summary: dict[str, Any] = {
        "scan": "training_data",
        "model": target.name,
        "onnx": str(target.onnx_path),
        "data": data_source,
        "samples": int(len(y)),
        "reference_samples": int(len(ref_y)) if ref_y is not None else 0,
        "poison_rate": rate,
        "poison_rate_known": poisoned is not None,
        "budget": budget,
        "budget_rule": f"{BUDGET_FACTOR} x poison rate x samples",
        "poisoned_known": int(len(poisoned)) if poisoned is not None else None,
        "methods": {name: {k: v for k, v in m.items() if k != "top"} for name, m in methods.items()},
        "clusters": [vars(s) for s in summaries],
    }
    out.mkdir(parents=True, exist_ok=True)
    findings.write_json(out / "data_scan.json", summary)
    _plot(spectral, clusters, y, poisoned, budget, out / "data_scan.png", target.name)
    findings.write_markdown(out / "data_scan.md", _markdown(summary))
    log.info(
        "scan-data %s: %s -> %s",
        target.name,
        ", ".join(f"{n} recall {m.get('recall', float('nan')):.3f}" for n, m in summary["methods"].items()),
        out,
    )
    return summary


def _plot(spectral, clusters, labels, poisoned, budget, path: Path, name: str) -> Path:
    fig = findings.figure(9, 3.2)
    is_poison = np.isin(np.arange(len(labels)), poisoned) if poisoned is not None else np.zeros(len(labels), bool)
    for ax, (title, scores) in zip(
        fig.subplots(1, 2), (("spectral signature score", spectral), ("activation clustering score", clusters))
    ):
        order = np.argsort(-scores, kind="stable")
        ranks = np.empty(len(order), dtype=int)
        ranks[order] = np.arange(len(order))
        ax.scatter(ranks[~is_poison], scores[~is_poison], s=4, c="gray", label="not known poisoned")
        if is_poison.any():
            ax.scatter(ranks[is_poison], scores[is_poison], s=4, c="red", label="known poisoned")
        ax.axvline(budget, color="black", lw=0.8, ls="--", label=f"budget ({budget})")
        ax.set_xlabel("rank")
        ax.set_ylabel(title)
        ax.set_yscale("symlog")
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: training samples ranked by poison score", fontsize=8)
    return findings.save(fig, path)


def _markdown(s: dict) -> list[str]:
    rows = []
    for name, m in s["methods"].items():
        by_class = ", ".join(f"{c}: {len(v)}" for c, v in m["top_by_class"].items())
        rows.append([name, m.get("precision", "n/a"), m.get("recall", "n/a"), by_class])
    cluster_rows = [
        [c["label"], c["silhouette"], f"{c['sizes'][0]}/{c['sizes'][1]}", c["suspect_share"], c["separation"]]
        for c in s["clusters"]
    ]
    return [
        f"# Training-data scan: {s['model']}",
        "",
        f"{s['samples']} samples ({s['data']}), {s['reference_samples']} clean reference samples. "
        f"Budget: top {s['budget']} ({s['budget_rule']}; poison rate {s['poison_rate']:.3g}, "
        f"{'known' if s['poison_rate_known'] else 'assumed'}).",
        "",
        *findings.table(["method", "precision", "recall", "top-ranked per class"], rows),
        "",
        "Activation clustering per class:",
        "",
        *findings.table(["class", "silhouette", "cluster sizes", "suspect share", "separation"], cluster_rows),
        "",
        "Sample indices per class are in data_scan.json (`methods.*.top_by_class`).",
        "",
        "![ranked scores](data_scan.png)",
    ]
