"""guard.tools.calibrate_steps, the sequence both forms of `guard calibrate` share: learners fitted on
separate samples are not cross-fitted, and what was written (config, ensemble, report) agrees."""

from __future__ import annotations

import json

import numpy as np

from guard.serving.model_config import load_model_config
from guard.tools.calibrate import calibrate_model
from tests.conftest import DEMO_REPOSITORY


def test_learners_fitted_elsewhere_are_not_cross_fitted_and_the_report_is_what_was_written(tmp_path):
    from tests.conftest import demo_split as load_split

    x, y = (np.array(a[:240]) for a in load_split("calibration"))
    fit_x, fit_y = (np.array(a[:200]) for a in load_split("train"))
    report = calibrate_model(
        DEMO_REPOSITORY / "digits_fp32" / "model.onnx",
        "m",
        tmp_path,
        x,
        y,
        detectors=[
            {"name": "mahalanobis", "type": "mahalanobis"},
            {"name": "median_2x2", "type": "squeeze_median", "size": 2},
        ],
        fit_data=(fit_x, fit_y),
        ensemble="fisher",
    )
    config = load_model_config(tmp_path / "m")
    assert report["cross_fit_folds"] == config.calibration.folds == 0  # mahalanobis never saw the references
    assert report["ensemble"] == {
        "method": "fisher",
        "references": "ensemble.npz",
        "threshold": config.detection.ensemble.threshold,
    }
    assert report["n_calibration"] + report["n_holdout"] == len(x) and report["monitors"] == []
    assert json.loads((tmp_path / "m" / "calibration.json").read_text()) == json.loads(json.dumps(report))
