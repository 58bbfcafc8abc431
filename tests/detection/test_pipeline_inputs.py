"""The pipeline with a model that takes a second, pass-through input beside the guarded one, on
numpy and on torch backends: every variant group gets its rows of the other input, the answers
are the original rows', and what a batch reports (timings, rows sent, shape keys) is right."""

import numpy as np
import pytest
import torch

from guard.detection.detectors.squeezing import BitDepthDetector, MedianDetector
from guard.detection.pipeline import GuardPipeline
from guard.protocol.errors import DetectorError
from tests.detection.helpers import StubBackend

ROWS = 5


class OffsetBackend(StubBackend):
    """logits = the first three pixels of each row + that row's `offset` input."""

    def __init__(self):
        self.feeds = []

    def infer(self, inputs, outputs, deadline=None):
        self.feeds.append(inputs)
        x, offset = inputs["input"], inputs["offset"]
        logits = x.reshape(len(x), -1)[:, :3] + offset
        return {"logits": logits, "features": x.reshape(len(x), -1)[:, :4]}


class TorchOffsetBackend(OffsetBackend):
    io = "torch"

    @property
    def device(self):
        return torch.device("cpu")


def pipeline(backend, detectors):
    return GuardPipeline(
        backend,
        detectors,
        guarded_input="input",
        logits_output="logits",
        output_names=["logits"],
        device=torch.device("cpu"),
    )


def batch():
    rng = np.random.default_rng(0)
    return {
        "input": rng.random((ROWS, 1, 4, 4), dtype=np.float32),
        "offset": rng.normal(size=(ROWS, 3)).astype(np.float32),
    }


def expected_logits(inputs):
    return inputs["input"].reshape(ROWS, -1)[:, :3] + inputs["offset"]


def as_numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("kind", [OffsetBackend, TorchOffsetBackend])
def test_every_variant_group_gets_its_rows_of_the_pass_through_input(kind):
    backend = kind()
    detectors = [BitDepthDetector("b", 0.5, bits=2), MedianDetector("m", 0.5, size=2)]
    inputs = batch()
    result = pipeline(backend, detectors).run(inputs)
    (feeds,) = backend.feeds
    copies = 1 + sum(d.num_variants for d in detectors)
    assert all(isinstance(v, torch.Tensor) == (kind is TorchOffsetBackend) for v in feeds.values())
    np.testing.assert_array_equal(as_numpy(feeds["offset"]), np.tile(inputs["offset"], (copies, 1)))
    assert result.rows_sent == copies * ROWS == len(feeds["input"])
    np.testing.assert_allclose(as_numpy(result.outputs["logits"]), expected_logits(inputs), rtol=1e-6)
    assert set(result.scores) == {"b", "m"} and all(s.shape == (ROWS,) for s in result.scores.values())
    assert set(result.timings) == {"squeeze", "backend", "detect"}
    assert all(0 <= t < 60 for t in result.timings.values())  # seconds spent, not a clock reading


@pytest.mark.parametrize("kind", [OffsetBackend, TorchOffsetBackend])
def test_outputs_without_variants_carry_the_pass_through_input_once(kind):
    backend = kind()
    inputs = batch()
    got = pipeline(backend, [BitDepthDetector("b", 0.5, bits=2)]).outputs(inputs, ["logits", "logits"])
    (feeds,) = backend.feeds
    np.testing.assert_array_equal(as_numpy(feeds["offset"]), inputs["offset"])
    np.testing.assert_allclose(as_numpy(got["logits"]), expected_logits(inputs), rtol=1e-6)
    np.testing.assert_array_equal(got["guarded"], inputs["input"])
    assert set(got) == {"logits", "guarded"}


def test_without_detectors_a_numpy_backend_gets_the_request_as_it_came():
    backend = OffsetBackend()
    inputs = batch()
    result = pipeline(backend, []).run(inputs)
    (feeds,) = backend.feeds
    assert feeds is inputs  # no copies, no tensors
    assert result.scores == {} and result.rows_sent == ROWS and set(result.timings) == {"backend"}
    assert 0 <= result.timings["backend"] < 60


def test_without_detectors_a_torch_backend_still_gets_tensors():
    backend = TorchOffsetBackend()
    inputs = batch()
    result = pipeline(backend, []).run(inputs)
    (feeds,) = backend.feeds
    assert all(isinstance(v, torch.Tensor) for v in feeds.values())
    assert result.scores == {} and result.rows_sent == ROWS
    np.testing.assert_allclose(as_numpy(result.outputs["logits"]), expected_logits(inputs), rtol=1e-6)


def test_requests_share_a_batch_when_every_input_but_the_batch_axis_agrees():
    guard = pipeline(OffsetBackend(), [])
    inputs = batch()
    assert guard.shape_key(inputs) == (("input", (1, 4, 4)), ("offset", (3,)))
    assert guard.shape_key({**inputs, "offset": np.zeros((ROWS, 4), np.float32)}) != guard.shape_key(inputs)


def test_detectors_that_read_features_need_the_features_output():
    from guard.detection.detectors.mahalanobis import MahalanobisDetector

    detector = MahalanobisDetector("maha", 1.0, statistics="m.npz")
    with pytest.raises(DetectorError, match=r"^detectors \['maha'\] need the model's features: set features_output$"):
        pipeline(OffsetBackend(), [detector])


def test_a_detector_whose_variants_fail_is_named_in_the_error():
    class Broken(BitDepthDetector):
        def variants(self, x):
            raise RuntimeError("no memory")

    with pytest.raises(DetectorError, match="^building detector variants failed: no memory$"):
        pipeline(OffsetBackend(), [Broken("b", 0.5, bits=2)]).run(batch())


@pytest.mark.parametrize("kind", [OffsetBackend, TorchOffsetBackend])
def test_one_detector_with_one_variant_doubles_every_input(kind):
    backend = kind()
    inputs = batch()
    result = pipeline(backend, [BitDepthDetector("b", 0.5, bits=2)]).run(inputs)
    (feeds,) = backend.feeds
    assert result.rows_sent == 2 * ROWS == len(feeds["input"]) == len(feeds["offset"])
    np.testing.assert_array_equal(as_numpy(feeds["offset"]), np.tile(inputs["offset"], (2, 1)))
    np.testing.assert_allclose(as_numpy(result.outputs["logits"]), expected_logits(inputs), rtol=1e-6)


def test_a_detector_whose_score_fails_is_named_in_the_error():
    class Broken(BitDepthDetector):
        def score(self, original, variants):
            raise RuntimeError("bad shape")

    with pytest.raises(DetectorError, match="^detector b failed: bad shape$"):
        pipeline(OffsetBackend(), [Broken("b", 0.5, bits=2)]).run(batch())
