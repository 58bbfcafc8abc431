"""The camera evaluation's side of a live gateway: frames go as JPEG bytes, one per request, with
`guard_explain: true` (guard's evaluation client, `GatewayClient.infer_encoded`), and what comes
back is reduced to what the evaluation judges (top-1, or boxes in frame pixels) plus every
detector's score and the verdict. `Reference` holds one model's clean answers: the negatives of every
ROC curve and the evaluation operating points.

Kept apart from guard_examples.camera_evaluation so the measuring rules can be read on their own.
"""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from guard.api import (
    Fisher,
    GatewayClient,
    Union,
    boxes_to_frame,
    build_detectors,
    load_combiner,
    load_model_config,
    rates,
    union_of,
    upper_bound,
)
from guard_examples import yolo

FPRS = rates.FPRS
PERSON = 0  # COCO's person class
PERSON_SCORE = 0.25
CHUNK = 32  # frames per client call: a YOLO answer is 860 KB, only its boxes are kept

log = logging.getLogger("guard_examples.camera_evaluation")


@dataclass
class Answers:
    """What the gateway answered for N frames of one model (reduced: top-1, or boxes in frame pixels)."""

    scores: dict[str, np.ndarray]
    verdicts: np.ndarray
    seconds: float
    top1: np.ndarray | None = None
    detections: list[list[yolo.Detection]] | None = None

    @property
    def flagged(self) -> np.ndarray:
        return self.verdicts != "clean"

    def subset(self, rows: list[int] | range) -> Answers:
        rows = list(rows)
        return Answers(
            {d: s[rows] for d, s in self.scores.items()},
            self.verdicts[rows],
            self.seconds * len(rows) / max(len(self.verdicts), 1),
            None if self.top1 is None else self.top1[rows],
            None if self.detections is None else [self.detections[i] for i in rows],
        )

    def persons(self, i: int) -> np.ndarray:
        boxes = [d.box for d in self.detections[i] if d.label == PERSON]
        return np.array(boxes, np.float32).reshape(-1, 4)


@dataclass(frozen=True)
class ServedModel:
    name: str
    directory: Path
    detection: bool
    size: tuple[int, int]
    window: int
    preprocess: dict = field(default_factory=dict, compare=False)  # a dict: kept out of the frozen hash
    """The served [preprocess] table (how the gateway resizes what it is sent)."""

    @classmethod
    def load(cls, directory: Path) -> ServedModel:
        config = tomllib.loads((directory / "config.toml").read_text())
        detection = config.get("output_kind") == "detection"
        size = (config["preprocess"]["height"], config["preprocess"]["width"])
        # The model's 5 s queue timeout: a detection frame costs ~0.1-0.4 s here, so fewer in flight.
        return cls(directory.name, directory, detection, size, 4 if detection else 8, dict(config["preprocess"]))

    def serve(self, client: GatewayClient, items: list[bytes], sizes: list[tuple[int, int]], desc: str) -> Answers:
        """Every item as its own request, in chunks (a YOLO answer is 860 KB; only boxes are kept)."""
        scores, verdicts, top1, detections = [], [], [], []
        window, client.window = client.window, self.window
        started = time.perf_counter()
        try:
            for i in range(0, len(items), CHUNK):
                try:
                    served = client.infer_encoded(self.name, items[i : i + CHUNK], desc)
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                        raise
                    log.warning(
                        "%s: %s with %d requests in flight; this chunk again, one at a time",
                        self.name,
                        exc.code().name,
                        client.window,
                    )
                    client.window = 1
                    try:
                        served = client.infer_encoded(self.name, items[i : i + CHUNK], desc)
                    finally:
                        client.window = self.window
                scores.append(served.scores)
                verdicts.append(served.verdicts)
                if self.detection:
                    raw = served.logits.reshape(len(served.logits), -1, 85)
                    detections += [self._to_frame(yolo.postprocess(d, PERSON_SCORE), s) for d, s in zip(raw, sizes[i:])]
                else:
                    top1.append(served.predictions)
        finally:
            client.window = window
        names = sorted(scores[0]) if scores else []
        return Answers(
            {n: np.concatenate([s[n] for s in scores]) for n in names},
            np.concatenate(verdicts) if verdicts else np.array([], str),
            time.perf_counter() - started,
            None if self.detection else np.concatenate(top1),
            detections if self.detection else None,
        )

    def _to_frame(self, found: list[yolo.Detection], size: tuple[int, int]) -> list[yolo.Detection]:
        placed = boxes_to_frame(np.array([d.box for d in found], np.float32).reshape(-1, 4), *size, *self.size)
        return [yolo.Detection(tuple(box), d.score, d.label) for box, d in zip(placed.tolist(), found)]


def served_combiner(directory: Path) -> Union | Fisher:
    """The served model's ensemble, loaded and checked by the server's own code (its detectors built
    from config.toml, guard.serving.runtime.load_combiner; a union of the judging detectors where the
    method is union): its `ratio` is the gateway's guard_score."""
    config = load_model_config(directory)
    detectors = build_detectors(
        config.path,
        config.detection.detectors,
        input_kind=config.guarded_kind,
        output_kind=config.detection.output_kind,
    )
    combiner = load_combiner(config, detectors)
    return union_of(detectors) if combiner is None else combiner


class Reference:
    """One model's clean frames (item 1) as the gateway scored them: the ROC negatives and the
    evaluation operating points of every scorer (the served ensemble's guard_score, each detector)."""

    def __init__(self, model: ServedModel, clean: Answers, sources: list[str]):
        self.model, self.clean, self.sources = model, clean, np.array(sources)
        self.combiner = served_combiner(model.directory)
        self.detectors = sorted(clean.scores)
        self.negatives = self.continuous(clean.scores)
        self.thresholds = {s: {f: rates.operating_threshold(v, f) for f in FPRS} for s, v in self.negatives.items()}

    def continuous(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"ensemble": self.combiner.ratio(scores), **{d: np.asarray(scores[d]) for d in self.detectors}}

    def agreement(self, answers: Answers) -> float:
        """Share of frames where the offline ensemble (ratio >= 1) agrees with the gateway's verdict."""
        return float(np.mean(rates.flagged(self.combiner.ratio(answers.scores), 1.0) == answers.flagged))

    def evaluate(self, answers: Answers, positives: np.ndarray, matched: Answers | None = None) -> tuple[dict, dict]:
        """Detection of the positive frames at each operating point, AUROC against the clean frames
        (and, with `matched`, the same frames unattacked, row for row: against those exact frames),
        the gateway's own flags; and the ROC inputs."""
        values = {s: v[positives] for s, v in self.continuous(answers.scores).items()}
        twins = {s: v[positives] for s, v in self.continuous(matched.scores).items()} if matched is not None else {}
        n = int(positives.sum())
        scorers = {}
        for s, v in values.items():
            scorers[s] = {
                **{f"det@{f:g}": float(rates.flagged(v, self.thresholds[s][f]).mean()) if n else None for f in FPRS},
                "auroc": rates.auroc(self.negatives[s], v),
            }
            if matched is not None:
                scorers[s]["auroc_matched"] = rates.auroc(twins[s], v)
        return {
            "positives": n,
            "gateway": float(answers.flagged[positives].mean()) if n else None,
            "scorers": scorers,
        }, {s: (self.negatives[s], v) for s, v in values.items()} if n else {}

    def summary(self) -> dict:
        method = load_model_config(self.model.directory).detection.ensemble.method
        return {
            **flag_counts(self.clean, self.sources),
            "detectors": self.detectors,
            "ensemble_method": method,
            "verdict_agreement": self.agreement(self.clean),
            "operating_points": {
                s: {
                    f"{f:g}": {"threshold": t, "clean_rate": float(rates.flagged(self.negatives[s], t).mean())}
                    for f, t in th.items()
                }
                for s, th in self.thresholds.items()
            },
        }


def flag_counts(answers: Answers, sources: list[str] | np.ndarray) -> dict:
    """Clean frames flagged at the SERVED thresholds (verdict != clean), in all and per source, each
    with its one-sided 95% Clopper-Pearson upper bound."""
    sources = np.asarray(sources)
    flagged, n = int(answers.flagged.sum()), len(answers.verdicts)
    by_source = {}
    for source in dict.fromkeys(sources.tolist()):
        mask = sources == source
        k, m = int(answers.flagged[mask].sum()), int(mask.sum())
        by_source[source] = {"n": m, "flagged": k, "rate": k / m, "upper_95": upper_bound(k, m)}
    return {
        "n": n,
        "flagged": flagged,
        "flag_rate": flagged / n if n else None,
        "flag_rate_upper_95": upper_bound(flagged, n),
        "by_source": by_source,
        "seconds_per_frame": answers.seconds / n if n else None,
    }
