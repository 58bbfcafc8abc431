"""guard.serving.validation on decoded requests: each check of a model's client contract (batch
dimension, free dimensions, value range, finiteness) answers with the whole message a client reads,
from its start; a contract without a range takes any finite value."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from guard.protocol.errors import InvalidInput
from guard.protocol.spec import TensorSpec
from guard.protocol.types import InferRequest
from guard.serving import validation


def model(*specs: TensorSpec, max_batch_size: int = 8):
    return SimpleNamespace(
        name="m",
        inputs=specs,
        outputs=(TensorSpec("out", "FP32", (2,)),),
        batching=SimpleNamespace(max_batch_size=max_batch_size),
    )


def check(config, **inputs: np.ndarray) -> int:
    request = InferRequest("m", dict(inputs))
    return validation.validate(config, request, dict.fromkeys(inputs, "FP32"))


def refused(config, **inputs: np.ndarray) -> str:
    with pytest.raises(InvalidInput) as info:
        check(config, **inputs)
    return info.value.message


def test_free_dimensions_show_as_a_star_and_may_not_be_empty():
    free = model(TensorSpec("x", "FP32", (-1, 4)))
    assert check(free, x=np.zeros((2, 7, 4), np.float32)) == 2
    assert refused(free, x=np.zeros((2, 7, 3), np.float32)) == (
        "input 'x': expected shape [N, *, 4], got [2, 7, 3] (dimension 2 is 3, expected 4)"
    )
    assert refused(free, x=np.zeros((2, 0, 4), np.float32)) == (
        "input 'x': expected shape [N, *, 4], got [2, 0, 4] (dimension 1 is 0, expected at least 1)"
    )
    assert refused(free, x=np.zeros((0, 7, 4), np.float32)) == (
        "input 'x': expected at least one row in the batch dimension"
    )


def test_inputs_agree_on_rows_within_the_model_limit():
    two = model(TensorSpec("a", "FP32", (3,)), TensorSpec("b", "FP32", (3,)), max_batch_size=4)
    assert check(two, a=np.zeros((2, 3), np.float32), b=np.zeros((2, 3), np.float32)) == 2
    assert refused(two, a=np.zeros((1, 3), np.float32), b=np.zeros((2, 3), np.float32)) == (
        "inputs disagree on the batch dimension: {'a': 1, 'b': 2}"
    )
    assert refused(two, a=np.zeros((5, 3), np.float32), b=np.zeros((5, 3), np.float32)) == (
        "input 'a': batch dimension 5 exceeds the model's max_batch_size 4"
    )


def test_without_a_range_any_finite_value_passes_and_nan_does_not():
    open_range = model(TensorSpec("x", "FP32", (2,)))
    assert check(open_range, x=np.array([[1e30, -1e30]], np.float32)) == 1
    assert refused(open_range, x=np.array([[0.0, np.nan]], np.float32)) == (
        "input 'x': expected finite values, got NaN or Inf"
    )
    ranged = model(TensorSpec("x", "FP32", (2,), range=(0.0, 1.0)))
    assert refused(ranged, x=np.array([[0.5, np.inf]], np.float32)) == (
        "input 'x': expected finite values, got NaN or Inf"
    )
    assert refused(ranged, x=np.array([[0.5, 3.0]], np.float32)) == (
        "input 'x': expected values in [0, 1], got values in [0.5, 3]"
    )
