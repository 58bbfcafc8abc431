"""guard.serving.judging.Judge: a model's verdicts come from its configured combination of the
detectors, not from their union whatever the config says."""

from __future__ import annotations

import numpy as np

from guard.detection.detectors.squeezing import BitDepthDetector
from guard.detection.ensemble import Fisher, Union
from guard.serving.judging import Judge


def test_the_configured_combiner_decides_not_the_union():
    # Evidence spread over four detectors, none past its own threshold: Fisher's combination finds
    # it, the union (what a judge without its combiner would use) cannot.
    rng = np.random.default_rng(0)
    calibration = {f"d{i}": rng.normal(size=2000) for i in range(4)}
    thresholds = Union.fit(calibration, 0.05).thresholds
    detectors = [BitDepthDetector(name, threshold, bits=4) for name, threshold in thresholds.items()]
    spread = {
        name: np.full(200, 0.8 * threshold) + rng.uniform(0.0, 0.1, 200) for name, threshold in thresholds.items()
    }
    spans = [slice(i, i + 1) for i in range(200)]
    fisher = Judge(detectors, Fisher.fit(calibration, 0.05), None)(spread, spans, [None] * 200)
    union = Judge(detectors, None, None)(spread, spans, [None] * 200)
    assert not any(v.flagged for v in union)
    assert sum(v.flagged for v in fisher) >= 190
    # a flagged row names the detector that was most unusual, though none passed its own threshold
    assert all(len(v.flagged_by) == 1 for v in fisher if v.flagged)
