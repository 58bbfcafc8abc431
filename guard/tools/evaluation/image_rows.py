"""An image plan through a live gateway: each model's clean calibration and test frames, then every
attack on the sampled test frames, judged by its rule on what the served model answered.

Frames go one per request as PNG at the model's input size (image_models.py). A row's eligible
frames are those whose CLEAN served answer the rule can attack (hide: the class was found), its
successful ones those whose ATTACKED served answer the rule counts as a success; detection is
measured on the successful ones only, at the served thresholds (the gateway's verdicts) and by the
refitted scorers, exactly as for tensor models (reference.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from guard.tools.evaluation.baseline_clock import BaselinesOf
from guard.tools.evaluation.client import GatewayClient, Served
from guard.tools.evaluation.frame_data import judged_rows
from guard.tools.evaluation.image_attacks import default_suite, run_rule_attack, white_box_asr
from guard.tools.evaluation.image_conditions import condition_rows
from guard.tools.evaluation.plan import Plan, Subject
from guard.tools.evaluation.reference import ModelReference, matches_config
from guard.tools.evaluation.sheets import example_sheet, pick_examples
from guard.tools.evaluation.subjects import configured_thresholds

if TYPE_CHECKING:
    from guard.tools.evaluation.run import EvalOptions

log = logging.getLogger("guard.tools.evaluation.image_rows")


def _model_rows(
    client: GatewayClient,
    repository: Path,
    plan: Plan,
    subject: Subject,
    options: EvalOptions,
    pick: np.ndarray,
    judged: np.ndarray,
    suffix: str,
    curves: dict,
    baselines_of: BaselinesOf,
) -> tuple[dict, list[dict]]:
    """One image model's summary and attack rows."""
    image, name = subject.image, subject.name
    assert image is not None  # plan.images holds the model directories
    test, calibration_frames = plan.frames("test"), plan.frames("calibration")
    # A model with per-camera baselines gets each frame's camera, as a deployment's cameras send it.
    test_cameras = list(test.cameras) if image.warmup else None
    test_views = image.views(test.frames)
    calibration = client.infer_encoded(
        name,
        image.encode(image.views(calibration_frames.frames)),
        desc=f"{name} calibration",
        cameras=list(calibration_frames.cameras) if image.warmup else None,
    )
    # Scores come back mapped by a camera's baseline once it is warm: the reference's thresholds are
    # refitted on those, not on the warm-up frames' unmapped ones.
    warm = judged_rows(calibration_frames.cameras, image.warmup)
    if len(warm) == 0:
        raise ConfigError(
            plan.path,
            "data.calibration",
            f"more than {image.warmup} frames of some camera ({name}'s baselines warm up on that many)",
            len(calibration_frames),
        )
    calibration = subset(calibration, warm)
    every = client.infer_encoded(name, image.encode(test_views), desc=f"{name} clean test", cameras=test_cameras)
    clean = subset(every, judged)  # a camera's warm-up frames are not judged: its baseline is not ready
    directory = repository / name
    reference = ModelReference(
        name,
        calibration,
        clean,
        sorted(configured_thresholds(directory)),
        load_model_config(directory).detection.ensemble.method,
        None,  # frames carry no labels: success is judged against the model's own clean answer
    )
    reference.summary["output_kind"] = image.output_kind
    reference.summary["matches_gateway_thresholds"] = matches_config(directory, reference)
    reference.summary["warmup_frames_per_camera"] = image.warmup
    if test.conditions:
        reference.summary["conditions"] = condition_rows(
            client, name, image, test, test.conditions, options.seed, baselines_of(name)
        )
    picked = subset(every, pick)
    clean_raw = image.raw(picked.logits)
    net = image.torch_model()
    x = image.as_tensor(test_views[pick])
    rows = []
    for spec in plan.image_attacks_for(subject) or default_suite(image.output_kind, options.quick):
        started = time.perf_counter()
        rule = spec.build_rule(image.boxes)
        adv = run_rule_attack(spec, net, rule, x, options.seed)
        served = client.infer_encoded(
            name,
            image.encode(image.as_views(adv)),
            desc=f"send {spec.key}",
            cameras=None if test_cameras is None else [test_cameras[i] for i in pick],
        )
        eligible, successful = rule.judge(clean_raw, image.raw(served.logits))
        row = reference.row(
            spec.label,
            spec.eps,
            "white-box",
            served,
            eligible,
            successful,
            white_box_asr(net, rule, x, adv),
            curves,
            suffix,
        )
        row["rule"] = {"name": spec.rule, "class": spec.target_class, "iou": spec.iou}
        row["params"] = spec.params
        shown = pick_examples(successful, eligible)
        if shown:
            sheet = options.report_dir / f"examples_{row['key']}.png"
            example_sheet(sheet, image, test_views[pick], image.as_views(adv), picked, served, shown)
            row["examples"] = sheet.name
        rows.append(row)
        log.info(
            "%s: ASR %s, served detection %s (%.1f s)",
            row["key"],
            row["asr"],
            row["served"]["rate"],
            time.perf_counter() - started,
        )
    return reference.summary, rows


def subset(served: Served, rows: np.ndarray) -> Served:
    """The answers of some rows, in the order `rows` gives."""
    return Served(served.logits[rows], {d: s[rows] for d, s in served.scores.items()}, served.verdicts[rows])


def evaluate_images(
    client: GatewayClient, repository: Path, plan: Plan, options: EvalOptions, baselines_of: BaselinesOf
) -> tuple[dict, dict]:
    """All rows and per-model summaries of an image plan, plus ROC inputs per row."""
    from guard.tools.evaluation.run import sample

    test = plan.frames("test")
    judged = judged_rows(test.cameras, max((s.image.warmup for s in plan.images if s.image is not None), default=0))
    pick = judged[sample(len(judged), options)]  # attacked frames: judged ones, whose camera is warm
    for old in options.report_dir.glob("examples_*.png"):  # a previous run's rows
        old.unlink()
    rows: list[dict] = []
    curves: dict[str, tuple[str, dict]] = {}
    summaries = {}
    for subject in plan.images:
        # Row keys name the model only when several are evaluated, so one model's keys stay short.
        suffix = f"@{subject.name}" if len(plan.images) > 1 else ""
        summaries[subject.name], found = _model_rows(
            client, repository, plan, subject, options, pick, judged, suffix, curves, baselines_of
        )
        rows += found
    return {
        "samples": len(pick),
        "sample_indices": pick.tolist(),
        "sample_frames": [test.names[i] for i in pick],
        "models": summaries,
        "rows": rows,
    }, curves
