"""Verdicts for a batch's requests from its detector scores: the ensemble's, against per-camera
baselines where the model has them (guard.detection.baselines)."""

from __future__ import annotations

import numpy as np

from guard.detection.baselines import Baselines
from guard.detection.detectors import Detector
from guard.detection.ensemble import Fisher
from guard.detection.verdicts import verdicts
from guard.protocol.types import UNCHECKED, Verdict


class Judge:
    def __init__(self, detectors: list[Detector], combiner: Fisher | None, baselines: Baselines | None):
        self.detectors = detectors
        self.combiner = combiner
        self.baselines = baselines

    def __call__(self, scores: dict[str, np.ndarray], spans: list[slice], flows: list[str | None]) -> list[Verdict]:
        """One verdict per span of rows; `flows`: each span's camera (or None)."""
        if not scores and self.detectors:  # the detectors failed and fail_open served the rows
            return [Verdict(UNCHECKED, 0.0) for _ in spans]
        if self.baselines is None or not scores or not any(flows):
            return verdicts(self.detectors, scores, spans, self.combiner)
        # Each camera's rows are judged against its baseline, which then takes the frame in.
        judged = verdicts(self.detectors, self.baselines.normalise(flows, spans, scores), spans, self.combiner)
        for camera, span, verdict in zip(flows, spans, judged):
            if camera is not None:  # the request's worst row, raw: what the baseline is made of
                self.baselines.observe(camera, {n: float(np.max(v[span])) for n, v in scores.items()}, verdict.flagged)
        return judged
