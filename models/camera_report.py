"""models.camera_evaluation's report: results.json, results.md (tables), one ROC plot per row
(guard's own plot, guard.tools.evaluation.tables.roc_png), the trained patch and a figure of clean
and patched frames with the served model's boxes, framed in the colour of the gateway's verdict.

Kept apart from the evaluation so the numbers and their presentation can be read separately.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from guard.tools.evaluation.tables import roc_png

VERDICT_COLOURS = {"clean": "#2e9d3a", "adversarial": "#d62728", "trigger": "#ff7f0e"}
NOTES = [
    "Served thresholds: the gateway's own, calibrated on bikes.mp4 (models/camera_guard.py) for a 5% clean flag "
    "rate; `verdict != clean` is what a client sees.",
    "Operating points at 1% / 5%: thresholds re-fitted on the clean frames of the first table (the largest "
    "threshold that flags at most that share of them), per scorer. They are evaluation operating points, not the "
    "served thresholds, and are fitted in-sample on those clean frames: new footage would scatter around them. "
    "The ensemble is scored by the served ensemble's own statistic (guard_score: its ratio to the served "
    "threshold); a detector by its raw score.",
    "AUROC: the clean frames of the first table against the successful examples (controls: against all their "
    "frames; 0.5 means indistinguishable from clean footage). The second AUROC table pairs each successful example "
    "with the same frame unattacked (MobileNetV2: the 224x224 quality-95 frame; YOLOv3-tiny: the frame as the "
    "camera sent it): whether the detectors react to the attack itself rather than to the scene.",
    "Ties: box_consistency and patch score 1.0 whenever one copy has boxes and the other none; more than 5% of "
    "the clean frames score exactly that, so their 1% and 5% operating points sit at 1.0 and flag nothing at "
    "1.0 (an operating point never flags more clean frames than its rate).",
    "Success is judged on what the SERVED model answered: MobileNetV2's top-1 changed from its answer on the "
    "same frame unattacked; YOLOv3-tiny no longer finds a person (score >= 0.25) it found on the clean frame "
    "(no person box at IoU >= 0.5). Detection counts successful examples only (patch: frames with a person "
    "hidden).",
    "Time per frame: wall time of the requests through the gateway divided by frames (one frame per request, a "
    "few requests in flight), on this host's shared CPU; it includes the guard's variants and JPEG decoding.",
]


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _cell(metrics: dict) -> str:
    return " / ".join([_num(metrics.get("det@0.01")), _num(metrics.get("det@0.05")), _num(metrics.get("auroc"), 3)])


def clean_table(results: dict) -> str:
    sources = list(results["meta"]["sources"])
    lines = ["| model | frames | flagged (served thresholds) | flag rate | 95% upper bound | "
             + " | ".join(sources) + " | guard s/frame | offline ensemble = verdict |",
             "|" + "---|" * (7 + len(sources))]
    for name, clean in results["clean"].items():
        per = [f"{_num(s['rate'])} ({s['flagged']}/{s['n']})" if (s := clean["by_source"].get(src)) else "—"
               for src in sources]
        lines.append(f"| {name} | {clean['n']} | {clean['flagged']} | {_num(clean['flag_rate'], 3)} | "
                     f"{_num(clean['flag_rate_upper_95'], 3)} | " + " | ".join(per)
                     + f" | {_num(clean['seconds_per_frame'], 3)} | {_num(clean['verdict_agreement'], 3)} |")
    return "\n".join(lines) + "\n"


def operating_table(results: dict) -> str:
    lines = ["| model | scorer | threshold at 1% (clean rate) | threshold at 5% (clean rate) |", "|---|---|---|---|"]
    for name, clean in results["clean"].items():
        for scorer, points in clean["operating_points"].items():
            cells = [f"{_num(p['threshold'], 4)} ({_num(p['clean_rate'], 3)})" for p in points.values()]
            lines.append(f"| {name} | {scorer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sources(counts: dict | None) -> str:
    return ", ".join(f"{src} {k}/{n}" for src, (k, n) in (counts or {}).items()) or "—"


def _other_measures(row: dict) -> str:
    if "asr_before_encoding" in row:
        return (f"white-box {_num(row['asr_before_encoding'])}, torch after JPEG "
                f"{_num(row['asr_torch_after_jpeg'])}")
    if row.get("asr_strict") is not None:
        return f"strict (no person box at IoU >= {row['iou_strict']:g}): {_num(row['asr_strict'])}"
    return "—"


def attack_table(results: dict, model: str) -> str:
    rows = [r for r in results["rows"] if r["model"] == model]
    if not rows:
        return ""
    scorers = list(rows[0]["scorers"])
    head = ["row", "kind", "ASR (succ/elig)", "by source", "other success measures", "positives",
            "gateway flags (served thresholds)", *(f"{s} 1% / 5% / AUROC" for s in scorers), "guard s/frame"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        asr = "—" if r["kind"] == "control" and r["unit"] == "frames" else \
            f"{_num(r['asr'])} ({r['successful']}/{r['eligible']} {r['unit']})"
        lines.append(f"| {r['key']} | {r['kind']} | {asr} | {_sources(r.get('asr_by_source'))} | "
                     f"{_other_measures(r)} | {r['positives']} | {_num(r['gateway'])} | "
                     + " | ".join(_cell(r["scorers"][s]) for s in scorers) + f" | {_num(r['seconds_per_frame'], 3)} |")
    matched = [r for r in rows if "auroc_matched" in r["scorers"]["ensemble"]]
    if matched:
        lines += ["", "AUROC against the same frames unattacked (row for row; not the clean frames above):", "",
                  "| row | " + " | ".join(scorers) + " |", "|" + "---|" * (len(scorers) + 1)]
        lines += [f"| {r['key']} | " + " | ".join(_num(r["scorers"][s]["auroc_matched"], 3) for s in scorers) + " |"
                  for r in matched]
    return "\n".join(lines) + "\n"


def goals_table(results: dict) -> str:
    lines = ["| model | attack | goal (at 5% clean flags) | ensemble at 5% | best single detector at 5% | "
             "gateway (served thresholds) | positives | met (ensemble) |", "|---|---|---|---|---|---|---|---|"]
    for g in results["goals"]:
        met = "—" if g["met"] is None else ("**met**" if g["met"] else "**missed**")
        lines.append(f"| {g['model']} | {g['attack']} | >= {g['goal']:.0%} | {_num(g['detected_at_5pct'])} | "
                     f"{g['best_single']} {_num(g['best_single_at_5pct'])} | {_num(g['gateway'])} | {g['positives']} "
                     f"| {met} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    meta, patch = results["meta"], results["patch"]
    per_frame = meta["gateway_seconds"] / max(meta["frames_through_gateway"], 1)
    text = (
        "# Camera guard under attack: real footage through a live gateway\n\n"
        f"Command: `{meta['command']}` (seed {meta['seed']}, {'quick' if meta['quick'] else 'full'} mode, "
        f"{meta['wall_seconds']:.0f} s in all, {meta['gateway_seconds']:.0f} s of it through the gateway for "
        f"{meta['frames_through_gateway']} frames, {per_frame:.3f} s per frame; torch on {meta['torch_threads']} "
        "threads). Repository: "
        f"`{meta['repository']}`, policy flag, one JPEG per request with `guard_explain: true`.\n\n"
        f"## Clean frames the guard was not calibrated on\n\nJPEG quality {meta['camera_quality']}, native size. "
        "Per source: flag rate (flagged/frames).\n\n" + clean_table(results)
        + "\nEvaluation operating points (re-fitted on these clean frames; not the served thresholds):\n\n"
        + operating_table(results)
    )
    for model in results["clean"]:
        text += f"\n## Attacks on {model}\n\nCells: detection at 1% / 5% clean-frame flag rate / AUROC.\n\n"
        text += attack_table(results, model)
    text += "\n## Goals\n\n" + goals_table(results)
    text += (f"\n## The patch\n\n{patch['side']}x{patch['side']} pixels (`patch.png`), {patch['steps']} Adam steps "
             f"(lr {patch['lr']}, TV weight {patch['tv_weight']}) at {patch['input_size']}x{patch['input_size']} on "
             f"{len(patch['training_frames'])} frames of {patch['training_clip']} "
             f"({', '.join(patch['training_frames'])}), "
             f"{patch['seconds']:.0f} s; pasted at {patch['fraction_of_box_diagonal']} x the person box's diagonal, "
             f"{patch['torso']} of its height down on a whole figure, {patch['torso_close']} on a head-and-shoulders "
             "box. Largest person score on the training frames (mean): "
             f"{_num(patch['training_max_person_score_clean'])} clean, "
             f"{_num(patch['training_max_person_score_patched'])} patched.\n")
    text += "\n## How to read this\n\n" + "".join(f"- {n}\n" for n in NOTES)
    return text


def _box_lines(ax, detections, colour: str) -> None:
    from matplotlib.patches import Rectangle

    for d in detections:
        x1, y1, x2, y2 = d.box
        person = d.label == 0
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.6 if person else 0.8,
                               edgecolor=colour if person else "#bbbbbb"))
        if person:
            ax.text(x1, y1, f"{d.score:.2f}", color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": colour, "pad": 0.5, "linewidth": 0})


def examples_png(path: Path, examples: list[dict]) -> Path | None:
    """Clean and patched frames side by side: the served model's boxes (persons in blue), a frame in
    the colour of the gateway's verdict."""
    if not examples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 2.9 * len(examples)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(examples), 2))
    for row, example in zip(axes, examples):
        for ax, which in zip(row, ("clean", "patched")):
            verdict = example[f"{which}_verdict"]
            ax.imshow(example[which])
            _box_lines(ax, example[f"{which}_boxes"], "#1f5fbf")
            for spine in ax.spines.values():
                spine.set(edgecolor=VERDICT_COLOURS.get(verdict, "black"), linewidth=5)
            ax.set_xticks([])
            ax.set_yticks([])
            extra = f", {example['hidden']}/{example['persons']} persons hidden" if which == "patched" else ""
            ax.set_title(f"{example['name']} {which}: {verdict}{extra}", fontsize=8)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    return path


def patch_png(path: Path, patch: torch.Tensor, scale: int = 4) -> Path:
    from PIL import Image

    pixels = (patch.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST).save(path)
    return path


def write_report(out: Path, results: dict, curves: dict, examples: list[dict], patch: torch.Tensor) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("roc_*.png"):
        old.unlink()
    written = {"json": out / "results.json", "markdown": out / "results.md"}
    written["json"].write_text(json.dumps(results, indent=1) + "\n")
    written["markdown"].write_text(markdown(results))
    for key, (title, row_curves) in curves.items():
        written[key] = roc_png(out / f"roc_{key}.png", title, row_curves)
    written["patch"] = patch_png(out / "patch.png", patch)
    if (figure := examples_png(out / "examples.png", examples)) is not None:
        written["examples"] = figure
    return written
