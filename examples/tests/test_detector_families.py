"""The leave-one-family-out recipe (guard_examples.detector_families): each family's examples are
that family's attack, the corruption negatives stay in range, and the table reads each row's
held-out figure from the network that never saw the row's family."""

from __future__ import annotations

import numpy as np
import pytest

from guard_examples.detector_families import FAMILIES, ROW_FAMILY, corrupted, family_examples, lofo_table
from guard_examples.detector_net import load_surrogate
from guard_examples.digits_data import load_split


def test_each_family_attacks_every_digit_and_moves_it_as_its_norm_allows():
    x, y = load_split("train")
    x, y = np.array(x[:24]), np.array(y[:24])
    model = load_surrogate()
    linf = family_examples("linf", model, x, y, 0)
    assert len(linf) == 4 * len(x)  # PGD once, FGSM at three budgets
    assert np.abs(linf - np.tile(x, (4, 1, 1, 1))).max() <= 0.3 + 1e-5
    square = family_examples("square", model, x, y, 0)
    assert np.abs(square - x).max() <= 0.3 + 1e-5 and np.abs(square - x).max() > 0.2  # Square's steps use the ball
    l2 = family_examples("l2", model, x, y, 0)
    assert len(l2) == 3 * len(x)
    with pytest.raises(ValueError, match="families: linf, l2, deepfool, square"):
        family_examples("hopskipjump", model, x, y, 0)


def test_corruptions_are_a_sign_pattern_and_a_blur_in_range():
    x, _ = load_split("train")
    x = np.array(x[:10])
    out = corrupted(x, 0)
    sign, blur = out[:10], out[10:]
    assert out.min() >= 0.0 and out.max() <= 1.0
    moved = np.abs(sign - x)
    assert np.isclose(moved[(x > 0.1) & (x < 0.9)], 0.1, atol=1e-6).all()  # every unclipped pixel moves 0.1
    assert (
        np.allclose(blur.mean(), x.mean(), atol=0.02)
        and np.abs(np.diff(blur, axis=-1)).mean() < np.abs(np.diff(x, axis=-1)).mean()
    )


def test_the_table_takes_each_rows_held_out_figure_from_the_network_without_its_family():
    rows = []
    for attack, family in ROW_FAMILY.items():
        for k, model in enumerate(
            ["digits_pgd_only", "digits_all_families", *(f"digits_without_{f}" for f in FAMILIES)]
        ):
            # A distinct figure per (row, model): the held-out network's is 0.5 + 0.01 * its family's index.
            held = model == f"digits_without_{family}"
            value = 0.5 + 0.01 * FAMILIES.index(family) if held else 0.1 * k
            rows.append(
                {"attack": attack, "eps": None, "model": model, "scorers": {"detector_network": {"det@0.05": value}}}
            )
    table = lofo_table({"rows": rows})
    for attack, family in ROW_FAMILY.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {attack} |"))
        assert line.endswith(f"| {0.5 + 0.01 * FAMILIES.index(family):.2f} |")
        assert f"| {family} | 0.00 | 0.10 |" in line
