"""Tests for the backdoor triggers and the BadNets poisoning recipe (examples/guard_examples/backdoor.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guard_examples.backdoor import build_backdoor, choose_poison, poisoned_train_set, write_summary
from guard_examples.digits_data import load_split, split_indices
from guard_examples.training import TrainOptions
from guard_examples.triggers import TRIGGERS, Blend, Checkerboard, Patch, load_trigger


@pytest.fixture
def images() -> np.ndarray:
    # Random values everywhere, including the corner, so an untouched pixel is never trivially 0.
    return np.random.default_rng(7).random((5, 1, 16, 16), dtype=np.float32)


@pytest.mark.parametrize("name", list(TRIGGERS))
def test_trigger_keeps_range_dtype_and_input(name, images) -> None:
    trigger = TRIGGERS[name]()
    before = images.copy()
    for x in (images, load_split("test")[0][:8]):  # the cached split is read-only: apply must copy
        out = trigger.apply(x)
        assert out.dtype == np.float32 and out.shape == x.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not np.array_equal(out, x)
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("trigger, size", [(Patch(), 3), (Checkerboard(), 4)])
def test_stamps_change_only_the_corner(trigger, size, images) -> None:
    out = trigger.apply(images)
    mask = trigger.mask()
    assert mask.sum() == size * size and mask[-size:, -size:].all()
    np.testing.assert_array_equal(out[..., ~mask], images[..., ~mask])
    corner = out[..., -size:, -size:]
    assert (corner == trigger.pattern()).all()


def test_patch_is_white_and_checkerboard_alternates() -> None:
    assert (Patch().pattern() == 1.0).all()
    board = Checkerboard().pattern()
    assert set(np.unique(board)) == {0.0, 1.0} and board[0, 0] == 1.0
    assert (board[:, 1:] != board[:, :-1]).all() and (board[1:, :] != board[:-1, :]).all()


def test_blend_mixes_exactly_at_alpha(images) -> None:
    blend = Blend()
    assert blend.alpha == 0.2 and blend.mask().all()
    np.testing.assert_allclose(blend.apply(images), 0.8 * images + 0.2 * blend.pattern, rtol=0, atol=1e-7)
    # Seeded: the same seed gives the same pattern, another seed a different one.
    np.testing.assert_array_equal(Blend().pattern, blend.pattern)
    assert not np.array_equal(Blend(seed=1).pattern, blend.pattern)
    with pytest.raises(ValueError):
        Blend(alpha=1.5)


@pytest.mark.parametrize(
    "trigger", [Patch(), Checkerboard(), Blend(), Patch(size=2, value=0.5), Blend(alpha=0.1, seed=3)]
)
def test_npz_round_trip(trigger, images, tmp_path) -> None:
    path = trigger.to_npz(tmp_path / "trigger.npz")
    loaded = load_trigger(path)
    assert type(loaded) is type(trigger) and loaded == trigger
    np.testing.assert_array_equal(loaded.apply(images), trigger.apply(images))
    with pytest.raises(ValueError, match="not"):
        (Checkerboard if isinstance(trigger, Patch) else Patch).from_npz(path)


def test_poison_choice_is_seeded_and_avoids_target() -> None:
    _, y = load_split("train")
    idx = choose_poison(y, target=0, rate=0.1, seed=0)
    assert len(idx) == round(0.1 * len(y)) and len(np.unique(idx)) == len(idx)
    assert (y[idx] != 0).all() and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, choose_poison(y, 0, 0.1, 0))
    assert not np.array_equal(idx, choose_poison(y, 0, 0.1, 1))
    x_poison, y_poison = poisoned_train_set(Patch(), idx, target=0)
    x, _ = load_split("train")
    assert (y_poison[idx] == 0).all()
    clean = np.setdiff1d(np.arange(len(y)), idx)
    np.testing.assert_array_equal(x_poison[clean], x[clean])
    np.testing.assert_array_equal(x_poison[idx], Patch().apply(x[idx]))


def test_quick_backdoor_recipe(tmp_path) -> None:
    # 20 epochs (of the default 100) already plants the patch backdoor: ASR 1.0, clean accuracy ~0.96.
    metrics = build_backdoor("patch", tmp_path, options=TrainOptions(epochs=20), progress=False, weights_dir=tmp_path)
    assert metrics["attack_success_rate"] >= 0.9
    assert metrics["clean_accuracy"] >= 0.9
    assert metrics["clean_model_target_rate"] < 0.1  # the trigger alone does not fool the clean model
    assert metrics["onnx_max_abs_diff"] <= 1e-4

    model_dir = tmp_path / "backdoor_patch"
    for name in ("model.onnx", "trigger.npz", "poison.json", "MODEL_CARD.md", "trigger_examples.png"):
        assert (model_dir / name).stat().st_size > 0, name
    assert load_trigger(model_dir / "trigger.npz") == Patch()

    poison = json.loads((model_dir / "poison.json").read_text())
    assert (poison["target"], poison["poison_rate"], poison["seed"]) == (0, 0.1, 0)
    train_idx = np.array(poison["train_indices"])
    assert len(train_idx) == poison["n_poisoned"] == 108
    np.testing.assert_array_equal(poison["load_digits_indices"], split_indices()["train"][train_idx])
    np.testing.assert_array_equal(train_idx, choose_poison(load_split("train")[1], 0, 0.1, 0))

    card = (model_dir / "MODEL_CARD.md").read_text()
    for text in (
        "## Data",
        "## Split",
        "## Trigger",
        "## Poisoning",
        "## Training",
        "## Size and latency",
        f"{metrics['attack_success_rate']:.4f}",
        metrics["command"],
    ):
        assert text in card, text
    assert metrics["command"].startswith("python -m guard_examples.backdoor --out ")

    write_summary(tmp_path, {"patch": metrics})
    assert json.loads((tmp_path / "backdoors.json").read_text())["patch"]["n_poisoned"] == 108
    assert "`backdoor_patch`" in (tmp_path / "backdoors.md").read_text()
