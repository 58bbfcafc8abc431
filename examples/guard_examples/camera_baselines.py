"""Per-camera baselines on real footage, through a live gateway: each clip a new camera, judged
after its own warm-up, under simulated conditions, against attacks, and after an hour of poisoning.

    python -m guard_examples.camera_baselines [--out reports/camera_baselines] [--models mobilenet_v2 yolov3_tiny]
                                      [--conditions clean dusk ...] [--warmup 50] [--cameras bikes ...]

Protocol (leave one camera out): the cameras are the packaged clips filmed in one continuous shot:
OpenCV's `vtest` (a fixed surveillance camera, 80 s; every third frame, a camera at 3.3 fps, so
that its judged part is about as long as the others'), `carphone` and `bigbuckbunny`. `bikes.mp4`
is an edited montage of six shots (footage.CUTS), a camera re-pointed five times in ten seconds, so
it is never a judged camera: its shots are calibration cameras, one each. For each camera, a
repository is calibrated with `[cameras.baseline]` on the OTHER cameras and bikes' shots (the
factory; guard.detection.baselines.simulate runs each calibration camera's warm-up as the server
will). The held-out clip is then a camera the guard never saw: it warms up on its first
`--warmup` frames, sent as they are, and its frames from `--warmup` + 5 on are judged at the
SERVED thresholds. So the judged frames are both the same camera later and a scene the factory
never saw; nothing judged was calibrated or warmed up on.

- **Conditions** (guard.tools.evaluation.conditions) ramp over the judged frames only: the warm-up
  saw the camera as it was. One camera stream per condition, run at once (the batcher mixes them).
  A ramp stands for hours (a dusk, a night's gain), but the frames go through in seconds, and a
  camera's baseline may follow its scene only `max_drift_per_hour` per hour of its clock. So each
  condition stream's baseline clock is simulated while they run (`--ramp-hours`, default 1;
  guard.tools.evaluation.baseline_clock, as `guard evaluate` does): its judged frames span that
  many hours, and the baseline can follow the ramp exactly as far as its hourly bound allows, no
  further (the poisoning row below uses the same bound). `--ramp-hours 0` keeps the wall clock: a
  ramp then reads as a sudden change, which the baseline may not follow at all.
- **Attacks on MobileNetV2**: PGD and MI-FGSM at eps 2, 4 and 8/255 (guard_examples.classifier_attack's
  construction: the attack changes the centre crop the gateway feeds the model) on 10 evenly spaced
  judged frames, sent by a warmed-up camera after the clean frames. Detection counts successful
  examples (the served top-1 differs from the served top-1 of the same frame unattacked).
- **Attack on YOLOv3-tiny**: L-inf PGD at eps 2, 4 and 8/255 that lowers the sum of every person
  score (objectness x person) above 0.02 in the 416x416 letterboxed frame
  (guard.tools.evaluation.pgd, 40 steps), on 12 judged frames (evenly spread) among those where
  the model finds a person; success: no person left (score >= 0.25).
- **Poisoning**: a camera whose owner pulls its baseline as far as the bounds allow for one hour
  of simulated time (every frame judged clean and each pulling harder than the hourly budget: the
  worst case; the server's baseline object is driven directly, on a simulated clock), then sends
  the 8/255 attacks. Its drift and detection are reported.
- **Photos** (single frames of unseen scenes, no camera, no warm-up) are judged against the
  factory and reported apart.

Each clean row gives flagged/frames and the one-sided 95% Clopper-Pearson upper bound.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as triton
from tqdm import tqdm

from guard.api import (
    CONDITIONS,
    BackgroundServer,
    ServerSettings,
    apply_condition,
    encode_jpeg,
    linf_pgd,
    simulated_hours,
    upper_bound,
)
from guard.api import attacks as atk
from guard_examples import classifier_attack, footage, patch_attack, yolo
from guard_examples.camera_baselines_tables import attack_table, clean_table
from guard_examples.camera_guard import CAMERAS, build_repository, load_cameras
from guard_examples.camera_protocols import GAP
from guard_examples.paths import WORKSPACE

log = logging.getLogger(__name__)

ROOT = WORKSPACE
MODELS = ("mobilenet_v2", "yolov3_tiny")
WARMUP = 50
ATTACK_FRAMES = 10
EPSILONS = (2, 4, 8)
POISON_HOURS = 1.0
PERSON_SCORE = 0.25
HIDE_FLOOR = 0.02  # the hiding attack drives every person score above this down
HIDE_STEPS = 40
HIDE_FRAMES = 12
RESENDS = 3


def build(
    repository: Path, calibration: dict[str, list[np.ndarray]], names: tuple[str, ...], warmup: int
) -> dict[str, dict]:
    """A repository of `names`, calibrated with per-camera baselines on `calibration` (camera ->
    frames in time order)."""
    frames = [f for clip in calibration.values() for f in clip]
    cameras = [name for name, clip in calibration.items() for _ in clip]
    return build_repository(repository, calibration=frames, cameras=cameras, names=names, warmup=warmup)


def send(url: str, model: str, frames: list[bytes], camera: str | None) -> list[triton.InferResult]:
    """Each frame in order, one request each. A frame the server's queue timeout expired on was never
    judged (its camera's baseline did not see it), so it is sent again, up to RESENDS times: on two
    shared cores, seven camera streams and whatever else runs can hold YOLOv3-tiny's queue past 5 s."""
    answers = []
    with triton.InferenceServerClient(url) as client:
        for data in frames:
            tensor = triton.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([data], dtype=object))
            for attempt in range(RESENDS + 1):
                try:
                    answer = client.infer(
                        model, [tensor], parameters={"camera_id": camera} if camera else {}, client_timeout=300
                    )
                    break
                except triton.InferenceServerException as e:
                    if e.status() != "StatusCode.DEADLINE_EXCEEDED" or attempt == RESENDS:
                        raise
                    log.warning("%s: a frame timed out in the queue; sent again", camera)
            answers.append(answer)
    return answers


def flagged(answers: list[triton.InferResult]) -> list[bool]:
    return [a.get_response().parameters["guard_verdict"].string_param != "clean" for a in answers]


def blamed(answers: list[triton.InferResult]) -> dict[str, int]:
    """Per detector, the flagged answers it is named in (guard_flagged_by): which judge flags."""
    names = collections.Counter(
        name
        for a in answers
        if a.get_response().parameters["guard_verdict"].string_param != "clean"
        for name in a.get_response().parameters["guard_flagged_by"].string_param.split(",")
        if name
    )
    return dict(sorted(names.items()))


def row(flags: list[bool], by: dict[str, int] | None = None) -> dict:
    n, k = len(flags), int(sum(flags))
    found = {"flagged": k, "frames": n, "rate": k / n if n else 0.0, "upper_95": upper_bound(k, n)}
    return found if by is None else {**found, "flagged_by": by}


def camera_run(
    url: str, model: str, camera: str, warmup: list[np.ndarray], judged: list[np.ndarray], condition: str
) -> dict:
    """Warm the camera up on `warmup` as it was, then judge `judged` under the condition: its row."""
    send(url, model, [encode_jpeg(f) for f in warmup], camera)
    answers = send(url, model, apply_condition(condition, judged), camera)
    return row(flagged(answers), blamed(answers))


# --- attacks -------------------------------------------------------------------------------------


def classifier_attacks(frames: list[np.ndarray], preprocess: dict, seed: int) -> dict[str, list[bytes]]:
    """Clean (quality 95) and attacked JPEGs of `frames`, keyed "clean" and "<attack>_<eps>"."""
    net = classifier_attack.Normalised(classifier_attack.mobilenet_v2.load_mobilenet_v2()).eval()
    views = [classifier_attack.served_view(rgb, preprocess) for rgb in frames]
    crops = np.stack([classifier_attack._crop(view, box) for view, box in views])
    x = (crops.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    labels = atk.predict(net, x)
    out = {"clean": [encode_jpeg(view, classifier_attack.ATTACK_QUALITY) for view, _ in views]}
    for eps in EPSILONS:
        for spec in (
            atk.AttackSpec(
                "pgd", eps / 255, {"alpha": max(eps / 4, 0.5) / 255, "steps": 10, "random_start": True}, batch_size=10
            ),
            atk.AttackSpec("mifgsm", eps / 255, {"alpha": eps / 2550, "steps": 10, "decay": 1.0}, batch_size=10),
        ):
            adv = atk.run_attack(spec, net, x, labels, seed=seed)
            pixels = (adv * 255).round().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
            out[f"{spec.name}_{eps}"] = [
                encode_jpeg(classifier_attack._paste(view, p, box), classifier_attack.ATTACK_QUALITY)
                for p, (view, box) in zip(pixels, views)
            ]
    return out


def letterboxed(rgb: np.ndarray) -> np.ndarray:
    """The 416x416 view the gateway letterboxes a frame to, as uint8 RGB: sent as it is, the gateway
    feeds it to the model unchanged, so the attack's pixels are the model's."""
    boxed, _ = yolo.letterbox(rgb)
    return (boxed.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)


def as_batch(views: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] views -> FP32 [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack(views).transpose(0, 3, 1, 2) / 255.0).float()


def hiding_attacks(frames: list[np.ndarray], seed: int, count: int = HIDE_FRAMES) -> dict[str, list[bytes]]:
    """Attacks on up to `count` of `frames` (evenly spread) in which the model finds a person: a
    frame without one has nothing to hide."""
    model = patch_attack.load_model()
    views = [letterboxed(f) for f in frames]
    with torch.no_grad():  # in batches: one forward per frame would cost the call overhead each time
        raw = np.concatenate(
            [patch_attack._forward(model, as_batch(views[i : i + 16])).numpy() for i in range(0, len(views), 16)]
        )
    with_person = [v for v, r in zip(views, raw) if len(patch_attack.persons_in(r, PERSON_SCORE))]
    if not with_person:
        return {"clean": []}
    picks = sorted({int(i) for i in np.linspace(0, len(with_person) - 1, count).round()})
    views = [with_person[i] for i in picks]
    x = as_batch(views)

    def loss(adv: torch.Tensor) -> torch.Tensor:
        # Per row: every person score still above HIDE_FLOOR, summed, so that all persons in the frame
        # go at once. The largest score alone moves one box per step and hid persons in 8 of 24 frames.
        scores = patch_attack.person_scores(patch_attack._forward(model, adv))
        return (scores * (scores > HIDE_FLOOR)).sum(dim=1)

    out = {"clean": [encode_jpeg(v, classifier_attack.ATTACK_QUALITY) for v in views]}
    for eps in EPSILONS:
        gen = torch.Generator().manual_seed(seed)
        adv = linf_pgd(loss, x, eps / 255, steps=HIDE_STEPS, alpha=eps / 255 / 10, gen=gen)
        pixels = (adv.numpy().transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype(np.uint8)
        out[f"hide_{eps}"] = [encode_jpeg(p, classifier_attack.ATTACK_QUALITY) for p in pixels]
    return out


def top1(answers: list[triton.InferResult]) -> np.ndarray:
    return np.array([a.as_numpy("logits").reshape(-1).argmax() for a in answers])


def persons(answers: list[triton.InferResult]) -> np.ndarray:
    return np.array(
        [len(patch_attack.persons_in(a.as_numpy("detections").reshape(-1, 85), PERSON_SCORE)) for a in answers]
    )


def attack_rows(url: str, model: str, camera: str, warmup: list[np.ndarray], jpegs: dict[str, list[bytes]]) -> dict:
    """Warm up, send the clean targets, then each attack; detection of the successful examples."""
    send(url, model, [encode_jpeg(f) for f in warmup], camera)
    clean = send(url, model, jpegs["clean"], camera)
    rows = {"clean targets": row(flagged(clean))}
    for key, frames in jpegs.items():
        if key == "clean":
            continue
        answers = send(url, model, frames, camera)
        if model == "mobilenet_v2":
            success = top1(answers) != top1(clean)
        else:
            success = (persons(clean) > 0) & (persons(answers) == 0)
        hits = np.array(flagged(answers))
        rows[key] = {
            "success": int(success.sum()),
            "eligible": len(frames),
            "detected": int(hits[success].sum()),
            "rate": float(hits[success].mean()) if success.any() else None,
        }
    return rows


def poison(srv: BackgroundServer, model: str, camera: str, hours: float) -> float:
    """Drive the camera's baseline as an owner of the camera would at best, for `hours` of
    simulated time (one frame every 10 s, each judged clean and pulling every score far up);
    returns the drift it reached, in the camera's spreads."""
    baselines = srv.server._runtimes[model].baselines
    baseline = baselines.camera(camera)
    clock = [baselines.clock()]
    real, baselines.clock = baselines.clock, lambda: clock[0]
    try:
        for _ in range(int(hours * 360)):
            clock[0] += 10.0
            baselines.observe(camera, {n: v + 1e6 for n, v in baseline.location.items()}, False)
    finally:
        baselines.clock = real
    return baseline.drift()


# --- the protocol ---------------------------------------------------------------------------------


def run_camera(
    held: str,
    clips: dict[str, list[np.ndarray]],
    names: tuple[str, ...],
    conditions: list[str],
    warmup: int,
    seed: int,
    build_root: Path,
    ramp_hours: float = 1.0,
) -> dict:
    others = {clip: frames for clip, frames in clips.items() if clip != held}
    repository = build_root / f"camera-repository-baselines-{held}"
    report: dict = {"calibration": build(repository, others, names, warmup)}
    frames = clips[held]
    start, judged = frames[:warmup], frames[warmup + GAP :]
    targets = [judged[int(i)] for i in np.linspace(0, len(judged) - 1, ATTACK_FRAMES).round()]
    with BackgroundServer(ServerSettings(repository=repository, grpc_port=0, metrics_port=-1)) as srv:
        for model in names:
            url = srv.grpc_url
            baselines = srv.server.baselines(model)
            assert baselines is not None  # the repository is built with per-camera baselines
            spans = {f"{held}/{c}": len(judged) for c in conditions}
            with simulated_hours(baselines, spans, ramp_hours), ThreadPoolExecutor(len(conditions)) as pool:
                futures = {c: pool.submit(camera_run, url, model, f"{held}/{c}", start, judged, c) for c in conditions}
                report.setdefault(model, {})["clean"] = {
                    c: f.result() for c, f in tqdm(futures.items(), desc=f"{held} {model}", unit="condition")
                }
            # Single photos of scenes no camera warmed up on: judged against the factory, reported apart.
            photos = [encode_jpeg(p) for p in footage.photos().values()]
            report[model]["photos"] = row(flagged(send(url, model, photos, None)))
            if model == "mobilenet_v2":
                preprocess = tomllib.loads((repository / model / "config.toml").read_text())["preprocess"]
                jpegs = classifier_attacks(targets, preprocess, seed)
            else:
                jpegs = hiding_attacks(judged, seed)
            report[model]["attacks"] = attack_rows(url, model, f"{held}/attacked", start, jpegs)
            send(url, model, [encode_jpeg(f) for f in start], f"{held}/poisoned")
            drift = poison(srv, model, f"{held}/poisoned", POISON_HOURS)
            poisoned = {k: v for k, v in jpegs.items() if k == "clean" or k.endswith("_8")}
            report[model]["poisoned"] = {
                "hours": POISON_HOURS,
                "drift_spreads": drift,
                **attack_rows(url, model, f"{held}/poisoned", [], poisoned),
            }
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "camera_baselines")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--conditions", nargs="+", choices=tuple(CONDITIONS), default=list(CONDITIONS))
    parser.add_argument("--cameras", nargs="+", choices=CAMERAS, default=list(CAMERAS))
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ramp-hours", type=float, default=1.0, help="simulated hours each condition's ramp spans (0: the wall clock)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("guard.access", "guard.serving.dataplane"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    clips = load_cameras()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    report = {
        "warmup": args.warmup,
        "gap": GAP,
        "conditions": args.conditions,
        "ramp_hours": args.ramp_hours,
        "results": results,
    }
    for held in args.cameras:
        results[held] = run_camera(
            held, clips, tuple(args.models), args.conditions, args.warmup, args.seed, ROOT / "build", args.ramp_hours
        )
        # After every camera: a run stopped later keeps what it measured.
        (args.out / "results.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    held_out = {f"{h} {m}": r["calibration"][m].get("holdout_fpr") for h, r in results.items() for m in args.models}
    text = [
        f"# Per-camera baselines on real footage (warm-up {args.warmup} frames, leave one camera out, "
        f"each ramp over {args.ramp_hours:g} simulated hours)",
        "",
        f"Calibration's own held-out clean flag rate (each calibration camera's last 30%): {held_out}",
        "",
        *clean_table(results, args.conditions),
        *attack_table(results),
    ]
    (args.out / "results.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
