"""guard_examples.camera_evaluation's report: results.json, results.md (the tables of each protocol, A
first, then B), one ROC plot per row (guard's own plot, guard.tools.evaluation.tables.roc_png), the
trained patch and, per protocol, a figure of clean and patched frames with the served model's boxes,
framed in the colour of the gateway's verdict.

Kept apart from the evaluation so the numbers and their presentation can be read separately.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from guard.api import roc_png

VERDICT_COLOURS = {"clean": "#2e9d3a", "adversarial": "#d62728", "trigger": "#ff7f0e"}
NOTES = [
    "Served thresholds: the gateway's own, calibrated by guard_examples.camera_guard for a 5% clean flag rate "
    "(protocol A: on bikes.mp4; protocol B: on the first half of each clip); `verdict != clean` is what a client "
    "sees. The calibration line of each protocol is calibrate_directory's own check: a random 30% of the "
    "calibration frames held out of fitting, so neighbouring frames sit on both sides of it (optimistic).",
    "Operating points at 1% / 5%: thresholds re-fitted on the protocol's clean frames (A: the other clips and the "
    "photos; B: the evaluation halves only), the largest threshold that flags at most that share of them, per "
    "scorer. They are evaluation operating points, not the served thresholds, and are fitted in-sample on those "
    "clean frames: new footage would scatter around them. The ensemble is scored by the served ensemble's own "
    "statistic (guard_score: its ratio to the served threshold); a detector by its raw score.",
    "AUROC: the protocol's clean frames against the successful examples (controls: against all their frames; 0.5 "
    "means indistinguishable from clean footage). The second AUROC table pairs each successful example with the "
    "same frame unattacked (MobileNetV2: the resized quality-95 frame; YOLOv3-tiny: the frame as the camera sent "
    "it): whether the detectors react to the attack itself rather than to the scene.",
    "Scopes (protocol B): `scenes` rows are frames of the evaluation halves, the camera's own scenes; `photos` rows "
    "are attacked photos, unseen scenes, still measured against the evaluation halves' clean frames, so their "
    "operating-point detection and first AUROC include the scene shift: compare their gateway flags with the clean "
    "photos' flag rate (unseen table) and read their AUROC against the same photos unattacked. The goals are "
    "judged on the `scenes` rows.",
    "box_consistency and patch score the largest change of any object's score between the two copies "
    "(guard.detection.boxes.disagreement): graded, so clean frames rarely tie at one value; where more than 1% "
    "(5%) of them do, the operating point sits at that value and flags nothing there (an operating point never "
    "flags more clean frames than its rate).",
    "Success is judged on what the SERVED model answered: MobileNetV2's top-1 changed from its answer on the "
    "same frame unattacked; YOLOv3-tiny no longer finds a person (score >= 0.25) it found on the clean frame "
    "(no person box at IoU >= 0.5). Detection counts successful examples only (patch: frames with a person "
    "hidden). The patch is never pasted on bikes.mp4, the clip it was trained on.",
    "Time per frame: wall time of the requests through the gateway divided by frames (one frame per request, a "
    "few requests in flight), on this host's shared CPU; it includes the guard's variants and JPEG decoding.",
]


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _cell(metrics: dict) -> str:
    return " / ".join([_num(metrics.get("det@0.01")), _num(metrics.get("det@0.05")), _num(metrics.get("auroc"), 3)])


def _flags(s: dict | None) -> str:
    return f"{_num(s['rate'])} ({s['flagged']}/{s['n']}; <= {_num(s['upper_95'])})" if s else "—"


def clean_table(summaries: dict, sources: list[str], extra: bool = True) -> str:
    """Flag rate at the served thresholds per model, in all and per source (rate (flagged/n; upper bound))."""
    tail = ["guard s/frame", "offline ensemble = verdict"] if extra else ["guard s/frame"]
    head = ["model", "frames", "flagged (served thresholds)", "flag rate", "95% upper bound", *sources, *tail]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, clean in summaries.items():
        cells = [
            name,
            str(clean["n"]),
            str(clean["flagged"]),
            _num(clean["flag_rate"], 3),
            _num(clean["flag_rate_upper_95"], 3),
            *(_flags(clean["by_source"].get(src)) for src in sources),
            _num(clean["seconds_per_frame"], 3),
        ]
        if extra:
            cells.append(_num(clean["verdict_agreement"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def operating_table(protocol: dict) -> str:
    lines = ["| model | scorer | threshold at 1% (clean rate) | threshold at 5% (clean rate) |", "|---|---|---|---|"]
    for name, clean in protocol["clean"].items():
        for scorer, points in clean["operating_points"].items():
            cells = [f"{_num(p['threshold'], 4)} ({_num(p['clean_rate'], 3)})" for p in points.values()]
            lines.append(f"| {name} | {scorer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sources(counts: dict | None) -> str:
    return ", ".join(f"{src} {k}/{n}" for src, (k, n) in (counts or {}).items()) or "—"


def _other_measures(row: dict) -> str:
    if "asr_before_encoding" in row:
        return f"white-box {_num(row['asr_before_encoding'])}, torch after JPEG {_num(row['asr_torch_after_jpeg'])}"
    if row.get("asr_strict") is not None:
        return f"strict (no person box at IoU >= {row['iou_strict']:g}): {_num(row['asr_strict'])}"
    return "—"


def _scoped(rows: list[dict]) -> bool:
    return any(r.get("scope", "all") != "all" for r in rows)


def attack_table(protocol: dict, model: str) -> str:
    rows = [r for r in protocol["rows"] if r["model"] == model]
    if not rows:
        return ""
    scorers = list(rows[0]["scorers"])
    scoped = _scoped(rows)
    label = (lambda r: f"{r['key']} ({r['scope']})") if scoped else (lambda r: r["key"])
    head = [
        "row",
        "kind",
        "ASR (succ/elig)",
        "by source",
        "other success measures",
        "positives",
        "gateway flags (served thresholds)",
        *(f"{s} 1% / 5% / AUROC" for s in scorers),
        "guard s/frame",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        asr = (
            "—"
            if r["kind"] == "control" and r["unit"] == "frames"
            else f"{_num(r['asr'])} ({r['successful']}/{r['eligible']} {r['unit']})"
        )
        lines.append(
            f"| {label(r)} | {r['kind']} | {asr} | {_sources(r.get('asr_by_source'))} | "
            f"{_other_measures(r)} | {r['positives']} | {_num(r['gateway'])} | "
            + " | ".join(_cell(r["scorers"][s]) for s in scorers)
            + f" | {_num(r['seconds_per_frame'], 3)} |"
        )
    matched = [r for r in rows if "auroc_matched" in r["scorers"]["ensemble"]]
    if matched:
        lines += [
            "",
            "AUROC against the same frames unattacked (row for row; not the clean frames above):",
            "",
            "| row | " + " | ".join(scorers) + " |",
            "|" + "---|" * (len(scorers) + 1),
        ]
        lines += [
            f"| {label(r)} | " + " | ".join(_num(r["scorers"][s]["auroc_matched"], 3) for s in scorers) + " |"
            for r in matched
        ]
    return "\n".join(lines) + "\n"


def goals_table(protocol: dict) -> str:
    lines = [
        "| model | attack | scope | goal (at 5% clean flags) | ensemble at 5% | best single detector at 5% | "
        "gateway (served thresholds) | positives | met (ensemble) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in protocol["goals"]:
        met = "—" if g["met"] is None else ("**met**" if g["met"] else "**missed**")
        lines.append(
            f"| {g['model']} | {g['attack']} | {g.get('scope', 'all')} | >= {g['goal']:.0%} | "
            f"{_num(g['detected_at_5pct'])} | {g['best_single']} {_num(g['best_single_at_5pct'])} | "
            f"{_num(g['gateway'])} | {g['positives']} | {met} |"
        )
    return "\n".join(lines) + "\n"


def _calibration_line(protocol: dict) -> str:
    parts = [
        f"{name} {c['n_calibration']} frames fitted, held-out clean flag rate {_num(c.get('holdout_fpr'), 3)} "
        f"({c.get('n_holdout')} frames, upper {_num(c.get('holdout_fpr_upper_95'), 3)})"
        for name, c in protocol.get("calibration", {}).items()
    ]
    return "; ".join(parts) or "not recorded"


def _span(indices: list[int]) -> str:
    return f"{indices[0]}-{indices[-1]}" if indices else "—"


def split_table(protocol: dict) -> str:
    lines = [
        "| clip | frames | calibration half | frames calibrated on | gap | evaluation half | frames evaluated |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in protocol["split"]:
        (c0, c1), (e0, e1) = s["calibration_half"], s["evaluation_half"]
        lines.append(
            f"| {s['clip']} | {s['frames']} | {c0}-{c1 - 1} | {len(s['calibration'])} "
            f"({_span(s['calibration'])}) | {s['gap']} | {e0}-{e1 - 1} | {len(s['evaluation'])} "
            f"({_span(s['evaluation'])}) |"
        )
    return "\n".join(lines) + "\n"


def protocol_section(protocol: dict, meta: dict) -> str:
    per_frame = protocol["gateway_seconds"] / max(protocol["frames_through_gateway"], 1)
    text = (
        f"## Protocol {protocol['label']} ({protocol['key']}): {protocol['title']}\n\n"
        f"Repository: `{protocol['repository']}`; {protocol['gateway_seconds']:.0f} s through its gateway for "
        f"{protocol['frames_through_gateway']} frames ({per_frame:.3f} s per frame). Calibration: "
        f"{_calibration_line(protocol)}.\n\n"
    )
    if "split" in protocol:
        text += (
            "Each clip is split by time: the first half calibrates (one repository for all three), the second "
            f"half after a gap of {meta['gap']} frames (near-identical neighbours never straddle the split) is "
            "the clean set.\n\n" + split_table(protocol)
        )
        text += (
            f"\n### Clean frames of the calibrated scenes (evaluation halves)\n\nJPEG quality "
            f"{meta['camera_quality']}, native size. Per clip: flag rate at the served thresholds "
            "(flagged/frames; one-sided 95% Clopper-Pearson upper bound).\n\n"
        )
    else:
        text += (
            f"### Clean frames the guard was not calibrated on\n\nJPEG quality {meta['camera_quality']}, native "
            "size. Per source: flag rate at the served thresholds (flagged/frames; one-sided 95% "
            "Clopper-Pearson upper bound).\n\n"
        )
    text += clean_table(protocol["clean"], list(protocol["sources"]))
    if "unseen" in protocol:
        text += "\n### Unseen scenes: the photos (served, not part of this protocol's clean set)\n\n" + clean_table(
            protocol["unseen"], list(protocol["unseen_sources"]), extra=False
        )
    text += (
        "\nEvaluation operating points (re-fitted on the clean frames above; not the served thresholds):\n\n"
        + operating_table(protocol)
    )
    for model in protocol["clean"]:
        text += f"\n### Attacks on {model}\n\nCells: detection at 1% / 5% clean-frame flag rate / AUROC.\n\n"
        text += attack_table(protocol, model)
    return text + f"\n### Goals (protocol {protocol['label']})\n\n" + goals_table(protocol) + "\n"


def markdown(results: dict) -> str:
    meta, patch = results["meta"], results["patch"]
    per_frame = meta["gateway_seconds"] / max(meta["frames_through_gateway"], 1)
    protocols = list(results["protocols"].values())
    text = (
        "# Camera guard under attack: real footage through a live gateway\n\n"
        f"Command: `{meta['command']}` (seed {meta['seed']}, {'quick' if meta['quick'] else 'full'} mode, "
        f"{meta['wall_seconds']:.0f} s in all, {meta['gateway_seconds']:.0f} s of it through the gateway for "
        f"{meta['frames_through_gateway']} frames, {per_frame:.3f} s per frame; torch on {meta['torch_threads']} "
        "threads). Protocols: "
        + ", ".join(f"{p['label']} ({p['key']})" for p in protocols)
        + "; each served by its own gateway, policy flag, one JPEG per request with `guard_explain: true`.\n\n"
    )
    text += "".join(protocol_section(p, meta) for p in protocols)
    text += (
        f"## The patch\n\n{patch['side']}x{patch['side']} pixels (`patch.png`), trained once for every "
        f"protocol, {patch['steps']} Adam steps "
        f"(lr {patch['lr']}, TV weight {patch['tv_weight']}) at {patch['input_size']}x{patch['input_size']} on "
        f"{len(patch['training_frames'])} frames of {patch['training_clip']} "
        f"({', '.join(patch['training_frames'])}), "
        f"{patch['seconds']:.0f} s; pasted at {patch['fraction_of_box_diagonal']} x the person box's diagonal, "
        f"{patch['torso']} of its height down on a whole figure, {patch['torso_close']} on a head-and-shoulders "
        "box. Largest person score on the training frames (mean): "
        f"{_num(patch['training_max_person_score_clean'])} clean, "
        f"{_num(patch['training_max_person_score_patched'])} patched.\n"
    )
    text += "\n## How to read this\n\n" + "".join(f"- {n}\n" for n in NOTES)
    return text


def _box_lines(ax, detections, colour: str) -> None:
    from matplotlib.patches import Rectangle

    for d in detections:
        x1, y1, x2, y2 = d.box
        person = d.label == 0
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=False,
                linewidth=1.6 if person else 0.8,
                edgecolor=colour if person else "#bbbbbb",
            )
        )
        if person:
            ax.text(
                x1,
                y1,
                f"{d.score:.2f}",
                color="white",
                fontsize=6,
                va="bottom",
                bbox={"facecolor": colour, "pad": 0.5, "linewidth": 0},
            )


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


def write_report(
    out: Path, results: dict, curves: dict, examples: dict[str, list[dict]], patch: torch.Tensor
) -> dict[str, Path]:
    """results.json, results.md, roc_<protocol>_<model>_<row>[_<scope>].png, patch.png and
    examples_<protocol>.png (one per protocol with a patched person)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("roc_*.png"), *out.glob("examples*.png")]:
        old.unlink()
    written = {"json": out / "results.json", "markdown": out / "results.md"}
    written["json"].write_text(json.dumps(results, indent=1) + "\n")
    written["markdown"].write_text(markdown(results))
    for key, (title, row_curves) in curves.items():
        written[key] = roc_png(out / f"roc_{key}.png", title, row_curves)
    written["patch"] = patch_png(out / "patch.png", patch)
    for slug, chosen in examples.items():
        if (figure := examples_png(out / f"examples_{slug}.png", chosen)) is not None:
            written[f"examples_{slug}"] = figure
    return written
