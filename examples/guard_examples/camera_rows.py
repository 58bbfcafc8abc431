"""The camera evaluation's rows (guard_examples.camera_evaluation): for each attack, the frames it was
tried on, those where it succeeded on the served model, and what the gateway flagged, at the
served thresholds and at fixed clean flag rates; the goals those rows are held to.
"""

from __future__ import annotations

import numpy as np
import torch

from guard.api import encode_jpeg
from guard_examples import patch_attack
from guard_examples.camera_gateway import Answers, Reference, ServedModel
from guard_examples.camera_protocols import Frame, Protocol
from guard_examples.classifier_attack import ATTACK_QUALITY

CAMERA_QUALITY = 90  # what guard_examples.camera_guard calibrated with (guard.tools.clean_data.encode_jpeg's default)
IOU_MATCH = 0.5
IOU_STRICT = 0.1  # the strict count: a person is hidden only if no person box overlaps it by even this much
GOALS = {"patch": 0.90, "pgd": 0.95, "mifgsm": 0.95}  # detected share of successful attacks at 5% clean flags


def vanished(clean: np.ndarray, after: np.ndarray, iou: float = IOU_MATCH) -> np.ndarray:
    """Per clean person box: no person box of the attacked frame overlaps it by IoU >= `iou`."""
    from torchvision.ops import box_iou

    if len(after) == 0:
        return np.ones(len(clean), bool)
    overlap = box_iou(torch.as_tensor(clean, dtype=torch.float32), torch.as_tensor(after, dtype=torch.float32))
    return (overlap.max(dim=1).values < iou).numpy()


def by_source(frames: list[Frame], eligible: list[int], successful: list[int]) -> dict[str, list[int]]:
    """{source: [successful, eligible]}: where an attack's successes come from."""
    found: dict[str, list[int]] = {}
    for frame, e, k in zip(frames, eligible, successful):
        counts = found.setdefault(frame.source, [0, 0])
        counts[0] += int(k)
        counts[1] += int(e)
    return found


def per_frame(answers: Answers, names: list[str], success=None) -> dict:
    """Every frame's verdict and detector scores, for analyses the tables do not make."""
    found = {
        "names": names,
        "verdicts": answers.verdicts.tolist(),
        "scores": {d: [round(float(v), 6) for v in s] for d, s in answers.scores.items()},
    }
    if success is not None:
        found["success"] = np.asarray(success).tolist()
    return found


def make_row(
    protocol: Protocol,
    scope: str,
    reference: Reference,
    key: str,
    kind: str,
    answers: Answers,
    eligible: int,
    successful: int,
    positives: np.ndarray,
    unit: str,
    frames: list[Frame],
    curves: dict,
    matched: Answers | None = None,
    success=None,
    **extra,
) -> dict:
    measured, curve = reference.evaluate(answers, positives, matched)
    if curve:
        name = "_".join([protocol.slug, reference.model.name, key] + ([] if scope == "all" else [scope]))
        curves[name] = (
            f"{key} on {reference.model.name} ({protocol.label}{'' if scope == 'all' else ', ' + scope}): "
            f"{int(positives.sum())} {'frames' if kind == 'control' else 'successful'}",
            curve,
        )
    sources = [f.source for f, p in zip(frames, positives) if p]
    n = len(answers.verdicts)
    return {
        "key": key,
        "model": reference.model.name,
        "kind": kind,
        "scope": scope,
        "frames": n,
        "unit": unit,
        "eligible": eligible,
        "successful": successful,
        "asr": successful / eligible if eligible else None,
        "flag_rate_all_frames": float(answers.flagged.mean()) if n else None,
        "verdict_agreement": reference.agreement(answers),
        "seconds_per_frame": answers.seconds / n if n else None,
        "positives_by_source": {s: sources.count(s) for s in dict.fromkeys(sources)},
        **extra,
        **measured,
        "per_frame": per_frame(answers, [f.name for f in frames], success),
    }


def classifier_rows(
    client, model: ServedModel, reference: Reference, protocol: Protocol, attacks: tuple[list, list], curves: dict
) -> list[dict]:
    targets, (clean_jpegs, done) = protocol.targets, attacks
    square = [model.size] * len(clean_jpegs)
    counterpart = model.serve(client, clean_jpegs, square, f"{model.name} clean 224")
    rows = []
    for scope, idx in protocol.scoped(targets):
        frames = [targets[i] for i in idx]
        rows.append(
            make_row(
                protocol,
                scope,
                reference,
                "clean_224_q95",
                "control",
                counterpart.subset(idx),
                len(idx),
                0,
                np.ones(len(idx), bool),
                "frames",
                frames,
                curves,
                jpeg_quality=ATTACK_QUALITY,
            )
        )
    for attack in done:
        served = model.serve(client, attack.jpegs, square, f"{model.name} {attack.spec.name}")
        success = served.top1 != counterpart.top1
        for scope, idx in protocol.scoped(targets):
            frames, hit = [targets[i] for i in idx], success[idx]
            rows.append(
                make_row(
                    protocol,
                    scope,
                    reference,
                    attack.spec.name,
                    "attack",
                    served.subset(idx),
                    len(idx),
                    int(hit.sum()),
                    hit,
                    "frames",
                    frames,
                    curves,
                    matched=counterpart.subset(idx),
                    success=hit,
                    asr_by_source=by_source(frames, [1] * len(idx), hit.tolist()),
                    eps=attack.spec.eps,
                    params=attack.spec.params,
                    asr_before_encoding=float(attack.before[idx].mean()),
                    asr_torch_after_jpeg=float(attack.after_jpeg[idx].mean()),
                    attack_seconds=attack.seconds,
                    jpeg_quality=ATTACK_QUALITY,
                )
            )
    return rows


def patch_rows(
    client,
    model: ServedModel,
    reference: Reference,
    protocol: Protocol,
    frames: list[Frame],
    detected: Answers,
    patches: dict[str, torch.Tensor],
    settings,
    quick: bool,
    curves: dict,
):
    """The patch on every person the served model found in `frames`, except on the attacker's clip."""
    scoped = protocol.scoped(frames)
    eligible = [
        i
        for _, idx in scoped
        for i in idx
        if frames[i].source != patch_attack.TRAINING_CLIP and len(detected.persons(i))
    ]
    if quick:  # a couple of frames of each scope
        eligible = [
            i for _, idx in protocol.scoped([frames[i] for i in eligible]) for i in [eligible[k] for k in idx][:2]
        ]
    patched_frames = [frames[i] for i in eligible]
    boxes = [detected.persons(i) for i in eligible]
    unpatched = detected.subset(eligible)
    rows, examples = [], []
    for label, patch in patches.items():
        pasted = [patch_attack.paste(frames[i].rgb, patch, b, settings) for i, b in zip(eligible, boxes)]
        served = model.serve(
            client,
            [encode_jpeg(p, CAMERA_QUALITY) for p in pasted],
            [frames[i].rgb.shape[:2] for i in eligible],
            f"{model.name} {label}",
        )
        gone = [vanished(b, served.persons(k)) for k, b in enumerate(boxes)]
        frame_success = np.array([g.any() for g in gone], bool)
        control = label != "patch"
        for scope, idx in protocol.scoped(patched_frames):
            part = [patched_frames[k] for k in idx]
            persons = int(sum(len(boxes[k]) for k in idx))
            strict = sum(int(vanished(boxes[k], served.persons(k), IOU_STRICT).sum()) for k in idx)
            rows.append(
                make_row(
                    protocol,
                    scope,
                    reference,
                    label,
                    "control" if control else "attack",
                    served.subset(idx),
                    persons,
                    int(sum(gone[k].sum() for k in idx)),
                    np.ones(len(idx), bool) if control else frame_success[idx],
                    "persons",
                    part,
                    curves,
                    matched=unpatched.subset(idx),
                    success=[int(gone[k].sum()) for k in idx],
                    asr_by_source=by_source(part, [len(boxes[k]) for k in idx], [gone[k].sum() for k in idx]),
                    asr_strict=strict / persons if persons else None,
                    iou_strict=IOU_STRICT,
                    frames_with_a_person_hidden=int(frame_success[idx].sum()),
                    jpeg_quality=CAMERA_QUALITY,
                )
            )
        if not control:
            for k in pick_examples([f.source for f in patched_frames], frame_success):
                i = eligible[k]
                examples.append(
                    {
                        "name": frames[i].name,
                        "clean": frames[i].rgb,
                        "patched": pasted[k],
                        "clean_boxes": detected.detections[i],
                        "patched_boxes": served.detections[k],
                        "clean_verdict": detected.verdicts[i],
                        "patched_verdict": served.verdicts[k],
                        "hidden": int(gone[k].sum()),
                        "persons": len(boxes[k]),
                    }
                )
    return rows, examples


def pick_examples(sources: list[str], success: np.ndarray, count: int = 3) -> list[int]:
    """Frames for the example figure: one per source first, successful attacks first."""
    order = sorted(range(len(sources)), key=lambda k: not success[k])
    picked: list[int] = []
    for k in order:
        if sources[k] not in {sources[j] for j in picked}:
            picked.append(k)
    return (picked + [k for k in order if k not in picked])[:count]


def goals(rows: list[dict]) -> list[dict]:
    """The goals, judged on the clean set's own scope (A: all frames; B: the calibrated scenes)."""
    found = []
    for row in rows:
        if row["kind"] != "attack" or row["key"] not in GOALS or row["scope"] == "photos":
            continue
        value = row["scorers"]["ensemble"]["det@0.05"]
        best = max((s for s in row["scorers"] if s != "ensemble"), key=lambda s: row["scorers"][s]["det@0.05"] or 0.0)
        found.append(
            {
                "model": row["model"],
                "attack": row["key"],
                "scope": row["scope"],
                "goal": GOALS[row["key"]],
                "best_single": best,
                "best_single_at_5pct": row["scorers"][best]["det@0.05"],
                "detected_at_5pct": value,
                "gateway": row["gateway"],
                "positives": row["positives"],
                "met": None if value is None else bool(value >= GOALS[row["key"]]),
            }
        )
    return found
