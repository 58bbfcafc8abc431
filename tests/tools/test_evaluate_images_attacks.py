"""The pieces image attacks are judged and made with, without a gateway: the hide / appear / move rules
matching boxes by class and IoU, and L-inf PGD on the 8-bit grid."""

from __future__ import annotations

import numpy as np
import torch


def test_rules_match_boxes_by_class_and_iou():
    from guard.detection.boxes import BoxSettings
    from guard.tools.evaluation.rules import REGISTRY

    def raw(*boxes: tuple[float, float, float, int]) -> np.ndarray:
        """One frame's [16, 7] yolo output with boxes (cx, cy, score, class) of side 8."""
        out = np.zeros((16, 7), np.float32)
        for i, (cx, cy, score, cls) in enumerate(boxes):
            out[i, :5] = (cx, cy, 8, 8, score)
            out[i, 5 + cls] = 1.0
        return out

    settings = BoxSettings(score_threshold=0.25)
    person, car = (12, 12, 0.9, 0), (12, 12, 0.9, 1)
    shifted = (12 + 5, 12, 0.9, 0)  # IoU 3/13 with the person: not the same box at 0.5
    clean = np.stack([raw(person), raw(person), raw(person), raw(car), raw()])
    after = np.stack([raw(), raw(car), raw(shifted), raw(car, person), raw()])
    hide, appear, move = (REGISTRY[n](settings) for n in ("hide", "appear", "move"))
    assert [list(m) for m in hide.judge(clean, after)] == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert [list(m) for m in appear.judge(clean, after)] == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]]
    assert [list(m) for m in move.judge(clean, after)] == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    loose = REGISTRY["hide"](settings, iou=0.2)  # at IoU 0.2 the shifted person is found again
    assert list(loose.judge(clean[2:3], after[2:3])[1]) == [False]
    two = np.stack([raw(person, (28, 28, 0.9, 0))])  # hiding one of two persons hides nothing
    assert list(hide.judge(two, np.stack([raw(person)]))[1]) == [False]
    assert list(move.judge(two, np.stack([raw(person)]))[1]) == [True]  # but one box is gone: moved


def test_pgd_on_the_8_bit_grid_stays_in_the_ball_and_keeps_its_best_iterate():
    from guard.tools.evaluation.pgd import linf_pgd

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=gen).float() / 255
    target = torch.rand(4, 3, 8, 8, generator=gen)
    eps = 3.5 / 255  # 3 levels reachable, never 4

    def loss(adv: torch.Tensor) -> torch.Tensor:
        return (adv - target).abs().flatten(1).sum(1)

    adv = linf_pgd(loss, x, eps, steps=6, alpha=1 / 255, gen=gen, random_start=True, keep_best=True, levels=255)
    levels = (adv - x) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 3 + 1e-4
    assert (loss(adv) < loss(x)).all() and adv.min() >= 0 and adv.max() <= 1
