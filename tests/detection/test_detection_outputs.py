"""Detectors for object-detection models and localised patches, on small known inputs: boxes are
decoded and compared as documented, the feature Gaussian matches numpy, and the patch detector
occludes the most textured region."""

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf

from guard.detection import squeezers
from guard.detection.boxes import Boxes, BoxSettings, decode, disagreement
from guard.detection.detectors import FitData, Outputs, build_detectors
from guard.detection.detectors.box_consistency import BoxConsistencyDetector
from guard.detection.detectors.feature_gaussian import FeatureGaussianDetector
from guard.detection.detectors.feature_squeeze import FeatureSqueezeDetector
from guard.detection.detectors.patch_occlusion import PatchOcclusionDetector, occlude_most_textured
from guard.protocol.errors import ConfigError

SETTINGS = BoxSettings(score_threshold=0.3, iou_threshold=0.5)


def yolo_rows(boxes: list[tuple[float, float, float, float, float, int]], anchors: int = 6, classes: int = 3):
    """A [anchors, 5 + classes] raw output holding the given (cx, cy, w, h, objectness, class)."""
    raw = torch.zeros(anchors, 5 + classes)
    for i, (cx, cy, w, h, obj, cls) in enumerate(boxes):
        raw[i, :5] = torch.tensor([cx, cy, w, h, obj])
        raw[i, 5 + cls] = 1.0
    return raw


def test_decode_thresholds_suppresses_overlaps_and_keeps_classes_apart():
    raw = yolo_rows(
        [
            (50, 50, 20, 20, 0.9, 0),
            (52, 50, 20, 20, 0.8, 0),  # same object twice: one survives
            (52, 50, 20, 20, 0.7, 1),  # same place, other class: kept
            (150, 150, 10, 10, 0.2, 2),
        ]
    )  # below the score threshold
    (found,) = decode(raw[None], SETTINGS)
    assert found.classes.tolist() == [0, 1]
    assert torch.allclose(found.xyxy[0], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert found.scores.tolist() == pytest.approx([0.9, 0.7])


def test_disagreement_is_the_largest_change_of_any_objects_score():
    a = Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0.9, 0.8]), torch.tensor([0, 1]))
    same = Boxes(a.xyxy.clone(), a.scores.clone(), a.classes.clone())
    assert disagreement(a, same) == 0.0
    dipped = Boxes(a.xyxy.clone(), torch.tensor([0.6, 0.7]), a.classes.clone())  # both matched, moved 0.3 and 0.1
    assert disagreement(a, dipped) == pytest.approx(0.3)
    lost_one = Boxes(a.xyxy[:1], torch.tensor([0.85]), a.classes[:1])  # matched moved 0.05; the 0.8 box is gone
    assert disagreement(a, lost_one) == pytest.approx(0.8)
    assert disagreement(lost_one, a) == pytest.approx(0.8)  # symmetric: a box that appeared counts the same
    other_class = Boxes(a.xyxy[:1], torch.tensor([0.4]), torch.tensor([5]))  # same place, other class: no match
    assert disagreement(a, other_class) == pytest.approx(0.9)
    empty = Boxes(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert disagreement(empty, empty) == 0.0 and disagreement(a, empty) == pytest.approx(0.9)


def test_a_box_that_dips_below_the_score_threshold_is_matched_not_lost():
    original = yolo_rows([(50, 50, 20, 20, 0.35, 0)])[None]
    variant = yolo_rows([(50, 50, 20, 20, 0.2, 0)])[None][None]  # under SETTINGS' 0.3, over the 0.05 floor
    outputs, squeezed = Outputs(original, None, boxes=SETTINGS), Outputs(variant, None, boxes=SETTINGS)
    assert BoxConsistencyDetector("b", 1.0).score(outputs, squeezed).tolist() == pytest.approx([0.15])
    # With the floor at the model's threshold the dipped box is lost, and its whole score counts.
    assert BoxConsistencyDetector("b", 1.0, floor=0.3).score(outputs, squeezed).tolist() == pytest.approx([0.35])


def test_box_consistency_scores_what_the_squeezed_copy_loses():
    original = torch.stack([yolo_rows([(50, 50, 20, 20, 0.9, 0)]), yolo_rows([(50, 50, 20, 20, 0.9, 0)])])
    squeezed = torch.stack([yolo_rows([(50, 50, 20, 20, 0.9, 0)]), yolo_rows([])])[None]  # the second vanished
    score = BoxConsistencyDetector("b", 1.0).score(
        Outputs(original, None, boxes=SETTINGS), Outputs(squeezed, None, boxes=SETTINGS)
    )
    assert score.tolist() == pytest.approx([0.0, 0.9])


def test_feature_squeeze_scores_the_relative_move_of_the_features():
    detector = FeatureSqueezeDetector("f", 1.0)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    squeezed = detector.variants(x)
    assert torch.equal(squeezed, squeezers.median(squeezers.bit_depth(x, 5), 2))
    features = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    moved = torch.tensor([[3.0, 4.0], [1.0, 2.0]])[None]  # the first did not move; the second by twice its size
    score = detector.score(Outputs(torch.zeros(2, 1), None, features), Outputs(torch.zeros(1, 2, 1), None, moved))
    assert score.tolist() == pytest.approx([0.0, 2.0])
    maps = torch.ones(2, 2, 3, 3)  # feature maps are compared whole, not pooled: a move in one cell counts
    shifted = maps.clone()[None]
    shifted[0, 0, 0, 0, 0] = 4.0
    score = detector.score(Outputs(torch.zeros(2, 1), None, maps), Outputs(torch.zeros(1, 2, 1), None, shifted))
    assert score.tolist() == pytest.approx([3.0 / np.sqrt(18.0), 0.0])


def test_feature_gaussian_pools_maps_and_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(300, 4, 3, 3)).astype(np.float32) + np.array([1.0, -1.0, 0.5, 2.0])[None, :, None, None]
    detector = FeatureGaussianDetector("g", None, tmp_path, statistics="g.npz")
    detector.fit(FitData(np.zeros((300, 1)), None, np.zeros((300, 1)), maps))
    detector.save(tmp_path)
    reloaded = FeatureGaussianDetector("g", 1.0, tmp_path, statistics="g.npz")
    probe = rng.normal(size=(1, 4, 3, 3)).astype(np.float32)
    score = reloaded.score(Outputs(torch.zeros(1, 1), None, torch.from_numpy(probe)), None)
    pooled = maps.mean(axis=(2, 3)).astype(np.float64)
    mean = pooled.mean(0)
    covariance, _ = ledoit_wolf(pooled - mean, assume_centered=True)  # the shrinkage estimator is scikit-learn's
    diff = probe.mean(axis=(2, 3))[0] - mean
    assert score.item() == pytest.approx(np.sqrt(diff @ np.linalg.inv(covariance) @ diff), rel=1e-4)


def test_patch_occlusion_hides_the_textured_region_and_scores_the_change():
    x = torch.full((2, 3, 200, 300), 0.5)
    x[0, :, 50:90, 200:260] = torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(0))
    occluded = occlude_most_textured(x, 0.25, 16)
    rows, cols = (occluded[0] != x[0]).any(0).nonzero(as_tuple=True)
    assert 40 <= rows.min() <= 50 and 90 <= rows.max() <= 100 and 200 <= cols.min() <= 215 and cols.max() >= 255
    assert torch.equal(occluded[1], x[1])  # a flat frame: the "occluded" window changes nothing
    p, q = torch.tensor([[0.9, 0.1]]), torch.tensor([[[0.2, 0.8]]])
    score = PatchOcclusionDetector("p", 1.0).score(Outputs(p.log(), p), Outputs(q.log(), q))
    assert score.tolist() == pytest.approx([1.4])


def test_detectors_declare_the_outputs_they_read(tmp_path):
    path = tmp_path / "config.toml"
    with pytest.raises(ConfigError, match=r"detectors\[0\].type.*a detector for detection outputs"):
        build_detectors(path, [{"type": "confidence_margin", "threshold": 1.0}], output_kind="detection")
    with pytest.raises(ConfigError, match=r"detectors\[0\].type.*a detector for classification outputs"):
        build_detectors(path, [{"type": "box_consistency", "threshold": 1.0}])
    with pytest.raises(ConfigError, match=r"a detector for tensor inputs"):
        build_detectors(
            path, [{"type": "box_consistency", "threshold": 1.0}], input_kind="tensor", output_kind="detection"
        )
    (built,) = build_detectors(path, [{"type": "patch_occlusion", "threshold": 1.0}], output_kind="detection")
    assert built.num_variants == 1
    with pytest.raises(ConfigError, match=r"a detector for tensor inputs"):
        build_detectors(path, [{"type": "squeeze_features", "threshold": 1.0}], input_kind="tensor")
    for kind in ("classification", "detection"):
        (built,) = build_detectors(path, [{"type": "squeeze_features", "threshold": 1.0}], output_kind=kind)
        assert built.needs_features and (built.bits, built.median) == (5, 2)
