"""Write the evaluation: results.json, results.md (one table) and one ROC plot per row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from guard.tools.evaluation import text_tables
from guard.tools.evaluation.rates import FPRS, roc_curve

# Column order of the table; a model without a detector shows a dash.
SCORER_ORDER = (
    "ensemble",
    "fs_paper",
    "strip",
    "bit_depth_1",
    "median_2x2",
    "bit_depth_2",
    "mahalanobis",
    "detector_network",
)
SERVED = "served thresholds (flagged)"
"""The column of the gateway's own verdicts: clean rows its flag rate (≤ the one-sided 95% upper
bound), attack rows the share of successful examples it flagged."""
LABELS = {
    "ensemble": "ensemble (gateway)",
    "fs_paper": "FS paper (bd1+med2) [baseline]",
    "strip": "strip [STRIP baseline]",
}


TENSOR_METHOD = (
    "Attacks are white-box on the plan's surrogate and transferred to the served model; an example "
    "counts as successful only if the SERVED model misclassifies it (triggers: classifies it as the "
    "target). ASR = successful / eligible (eligible: clean image classified correctly by the served model; "
    "triggers: label != target). "
)
IMAGE_METHOD = (
    "Attacks are white-box on the served model's own ONNX run as torch; each row's success rule (hide, appear, "
    "move, flip) judges the SERVED model's answer for the attacked frame against its answer for the clean one. "
    "ASR = successful / eligible (eligible: clean frames the rule can attack, e.g. for hide those on which the "
    "class was found). "
)


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _cell(metrics: dict | None) -> str:
    if metrics is None:
        return "—"
    return " / ".join([*(_num(metrics.get(f"det@{f:g}")) for f in FPRS), _num(metrics.get("auroc"), 3)])


def _served_clean(model: dict) -> str:
    """The clean test frames the gateway flagged at its served thresholds, with the 95% upper bound."""
    rate = model.get("clean_flag_rate")
    if not rate or rate["rate"] is None:
        return "—"
    return f"{_num(rate['rate'])} ({rate['flagged']}/{rate['n']}, ≤ {_num(rate['upper_95'])})"


def _served_row(row: dict) -> str:
    """The successful examples the gateway flagged at its served thresholds."""
    served = row.get("served")
    if not served or served["rate"] is None:
        return "—"
    return f"{_num(served['rate'])} ({served['detected']}/{served['successful']})"


def _quality(model: dict) -> str:
    """The clean row's 4th cell: accuracy where the data carry labels, else the model's output kind."""
    if model.get("clean_accuracy") is not None:
        return f"acc {_num(model['clean_accuracy'], 3)}"
    return model.get("output_kind", "—")


def _order(scorer: str) -> tuple[int, str]:
    return (SCORER_ORDER.index(scorer) if scorer in SCORER_ORDER else len(SCORER_ORDER), scorer)


def _columns(results: dict) -> list[str]:
    return sorted({s for row in results["rows"] for s in row["scorers"]}, key=_order)


def markdown_table(results: dict) -> str:
    """One table: a row per model's clean test split (realised FPR), then per attack / trigger."""
    columns = _columns(results)
    head = ["attack", "eps", "model", "ASR (succ/elig)", SERVED, *(LABELS.get(c, c) for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, model in results["models"].items():
        cells = [
            " / ".join([*(_num(model["clean_fpr"][c][f"{f:g}"]) for f in FPRS), "—"])
            if c in model["clean_fpr"]
            else "—"
            for c in columns
        ]
        lines.append(
            f"| clean test: realised FPR | — | {name} | {_quality(model)} | {_served_clean(model)} | "
            + " | ".join(cells)
            + " |"
        )
    for row in results["rows"]:
        asr = f"{_num(row['asr'])} ({row['successful']}/{row['eligible']})"
        eps = "—" if row["eps"] is None else f"{row['eps']:g}"
        lines.append(
            f"| {row['attack']} | {eps} | {row['model']} | {asr} | {_served_row(row)} | "
            + " | ".join(_cell(row["scorers"].get(c)) for c in columns)
            + " |"
        )
    return "\n".join(lines) + "\n"


def conditions_section(results: dict) -> str:
    """Per model with [data] conditions: each condition's served clean flag rate after the warm-up,
    overall and for its worst camera."""
    lines = []
    for name, model in results.get("models", {}).items():
        rows = model.get("conditions")
        if not rows:
            continue
        hours = next(iter(rows.values())).get("ramp_hours", 0.0)
        span = (
            f"over {hours:g} simulated hours of each camera's baseline clock"
            if hours
            else "on the wall clock (a --connect gateway's clock is out of reach): a ramp reads as a sudden change"
        )
        lines += [
            f"\n### {name}: clean test frames under simulated conditions\n",
            "Each camera warms up as it was, then its judged frames are ramped to the condition "
            f"(guard.tools.evaluation.conditions), {span}; flagged at the served thresholds, with the one-sided "
            "95% upper bound.\n",
            "| condition | flagged | rate (≤ upper 95%) | worst camera |",
            "|---|---|---|---|",
        ]
        for condition, row in rows.items():
            worst, by = max(row["cameras"].items(), key=lambda item: item[1]["rate"] or 0.0)
            lines.append(
                f"| {condition} | {row['flagged']}/{row['n']} | {_num(row['rate'])} (≤ {_num(row['upper_95'])}) | "
                f"{worst}: {by['flagged']}/{by['n']} |"
            )
    return "\n".join(lines) + ("\n" if lines else "")


def _method(results: dict) -> str:
    if text_tables.is_text(results):
        return text_tables.METHOD
    return IMAGE_METHOD if any("output_kind" in m for m in results.get("models", {}).values()) else TENSOR_METHOD


def markdown(results: dict) -> str:
    meta = results["meta"]
    fprs = " / ".join(f"{f:.0%}" for f in FPRS)
    methods = ", ".join(sorted({f"`{m.get('ensemble_method', 'union')}`" for m in results.get("models", {}).values()}))
    return (
        f"# guard evaluate: detection results\n\n"
        f"Command: `{meta['command']}` (seed {meta['seed']}, {meta['samples']} test samples, "
        f"{'quick' if meta['quick'] else 'full'} mode, {meta['wall_seconds']:.0f} s from start to the last "
        f"measurement, gateway {meta['gateway']}).\n\n"
        "Every number comes from what the gateway returned over gRPC (logits and `guard_detector_scores`). "
        + _method(results)
        + "Detection is measured on successful examples only. Thresholds are fitted on "
        "the calibration split with the gateway's own rules (guard.detection.ensemble: the ensemble by its configured "
        f"method, {methods}; baselines and single detectors as unions); the first rows give the realised "
        "clean flag rate on the test split.\n\n"
        f"Column `{SERVED}`: the gateway's own verdicts at the thresholds it serves; clean rows give the flag "
        "rate on the clean test split with its one-sided 95% upper bound (Clopper-Pearson), attack rows the "
        "share of successful examples flagged.\n\n"
        f"Cells: detection at {fprs} target FPR / AUROC (clean test vs successful examples; the ensemble and "
        "the baselines are scored by their ratio to the 5% thresholds, the gateway's `guard_score`). A dash: "
        "no such detector for that model, or no successful example.\n\n"
        + markdown_table(results)
        + conditions_section(results)
        + (text_tables.sections(results) if text_tables.is_text(results) else "")
        + "".join(f"\n{note}\n" for note in meta.get("notes", []))
    )


def roc_png(path: Path, title: str, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """ROC curves (clean test negatives vs successful positives) for each scorer, log-x axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    for name, (negatives, positives) in curves.items():
        fpr, tpr = roc_curve(negatives, positives)
        ax.step(
            np.maximum(fpr, 1e-3),
            tpr,
            where="post",
            label=LABELS.get(name, name),
            linewidth=2.2 if name == "ensemble" else 1.1,
        )
    for f in FPRS:
        ax.axvline(f, color="grey", linestyle=":", linewidth=0.8)
    ax.set(
        xscale="log",
        xlim=(1e-3, 1.0),
        ylim=(0.0, 1.02),
        xlabel="false-positive rate (clean test)",
        ylabel="detection rate (successful examples)",
        title=title,
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=90, metadata={"Software": None})
    return path


def write_report(report_dir: Path, results: dict, curves: dict[str, tuple[str, dict]]) -> dict[str, Path]:
    """results.json, results.md and roc_<row>.png under report_dir; returns what was written.
    curves: row key -> (plot title, {scorer: (clean test scores, successful examples' scores)})."""
    report_dir.mkdir(parents=True, exist_ok=True)
    for old in report_dir.glob("roc_*.png"):
        old.unlink()
    written = {"json": report_dir / "results.json", "markdown": report_dir / "results.md"}
    written["json"].write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    written["markdown"].write_text(markdown(results))
    for key, (title, row_curves) in curves.items():
        if row_curves:
            ordered = {s: row_curves[s] for s in sorted(row_curves, key=_order)}
            written[key] = roc_png(report_dir / f"roc_{key}.png", title, ordered)
    return written
