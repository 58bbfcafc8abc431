"""When an attack on an image model has succeeded, judged on what the SERVED model answered for the
clean frame and for the attacked one; and what the attack minimises to get there.

Each rule is one class in REGISTRY, picked by a plan's `[[attacks]] rule`:

| rule | output kind | eligible frames | success |
| --- | --- | --- | --- |
| `hide` | detection | the clean frame has a box of `class` | none of those boxes is found after the attack |
| `appear` | detection | the clean frame has no box of `class` | a box of `class` is found after the attack |
| `move` | detection | the clean frame has a box | some clean box is no longer found after the attack |
| `flip` | classification | every frame | the top-1 class differs from the clean frame's |

Boxes are those the served model reports: its raw output decoded with its [boxes] settings
(guard.detection.boxes.decode: score threshold, per-class NMS). A clean box is "found" after the
attack when a box of the same class overlaps it by IoU >= `iou` (guard.detection.boxes.pairwise_iou,
the IoU the detectors match boxes with). `class` defaults to 0, a person in COCO's class order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from guard.detection.boxes import Boxes, BoxSettings, decode, pairwise_iou
from guard.detection.detectors.base import CLASSIFICATION, DETECTION

PERSON = 0
"""COCO's class 0, what a hiding attack hides by default."""


def found(clean: Boxes, after: Boxes, iou: float) -> torch.Tensor:
    """[K] per clean box: some box of `after` has its class and overlaps it by IoU >= iou."""
    if len(clean.scores) == 0 or len(after.scores) == 0:
        return torch.zeros(len(clean.scores), dtype=torch.bool)
    overlap = pairwise_iou(clean.xyxy, after.xyxy)
    overlap[clean.classes[:, None] != after.classes[None, :]] = 0.0
    return overlap.max(dim=1).values >= iou


class Rule(ABC):
    """Success of an attack on one output kind, and the per-row loss PGD minimises for it."""

    name: ClassVar[str]
    output_kind: ClassVar[str]

    def __init__(self, boxes: BoxSettings | None = None, target_class: int = PERSON, iou: float = 0.5):
        self.boxes, self.target_class, self.iou = boxes, target_class, iou

    @abstractmethod
    def judge(self, clean: np.ndarray, attacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(eligible, successful) [N] masks from the served raw outputs of the clean and attacked frames."""

    @abstractmethod
    def loss(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """[B] loss to minimise on the model's raw output for the attacked frames, given its raw
        output for the clean ones (zero or below once the attack has what it wants)."""


class BoxRule(Rule):
    output_kind = DETECTION

    def _decode(self, raw: np.ndarray | torch.Tensor) -> list[Boxes]:
        if self.boxes is None:
            raise ValueError(f"rule {self.name} judges detection outputs and needs their [boxes] settings")
        return decode(torch.as_tensor(np.asarray(raw, np.float32)), self.boxes)

    def judge(self, clean: np.ndarray, attacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = list(zip(self._decode(clean), self._decode(attacked)))
        eligible = np.array([self.eligible(c) for c, _ in pairs], bool)
        successful = np.array([e and self.succeeded(c, a) for e, (c, a) in zip(eligible, pairs)], bool)
        return eligible, successful

    @abstractmethod
    def eligible(self, clean: Boxes) -> bool: ...

    @abstractmethod
    def succeeded(self, clean: Boxes, attacked: Boxes) -> bool: ...

    def class_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """[B, A] each anchor's score for the target class (yolo: objectness x class score)."""
        return raw[..., 4] * raw[..., 5 + self.target_class]

    def _of_class(self, boxes: Boxes) -> Boxes:
        keep = boxes.classes == self.target_class
        return Boxes(boxes.xyxy[keep], boxes.scores[keep], boxes.classes[keep])

    @property
    def threshold(self) -> float:
        assert self.boxes is not None  # a detection model's config always has [boxes]
        return self.boxes.score_threshold


class Hide(BoxRule):
    name = "hide"

    def eligible(self, clean: Boxes) -> bool:
        return bool((clean.classes == self.target_class).any())

    def succeeded(self, clean: Boxes, attacked: Boxes) -> bool:
        return not bool(found(self._of_class(clean), attacked, self.iou).any())

    def loss(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        # Every anchor's score for the class still above half the served threshold, summed: all of
        # a frame's objects go at once (the largest alone would move one box per step), and a margin
        # below the threshold absorbs the small difference between torch and the served runtime.
        scores = self.class_scores(output)
        return (scores * (scores > self.threshold / 2)).sum(dim=1)


class Appear(BoxRule):
    name = "appear"

    def eligible(self, clean: Boxes) -> bool:
        return not bool((clean.classes == self.target_class).any())

    def succeeded(self, clean: Boxes, attacked: Boxes) -> bool:
        return bool((attacked.classes == self.target_class).any())

    def loss(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        # Raise the best anchor's score for the class until it is twice the served threshold.
        best = self.class_scores(output).amax(dim=1)
        return torch.relu(min(2 * self.threshold, 1.0) - best)


class Move(BoxRule):
    name = "move"

    def eligible(self, clean: Boxes) -> bool:
        return len(clean.scores) > 0

    def succeeded(self, clean: Boxes, attacked: Boxes) -> bool:
        return not bool(found(clean, attacked, self.iou).all())

    def loss(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        # Per clean box, every anchor's score for its class weighted by how much the anchor's box
        # still overlaps it: lowering the score or sliding the box away both count.
        centre, size = output[..., :2], output[..., 2:4]
        corners = torch.cat([centre - size / 2, centre + size / 2], -1)
        losses = []
        for row, boxes in enumerate(self._decode(clean.detach())):
            if len(boxes.scores) == 0:
                losses.append(output[row].sum() * 0.0)
                continue
            overlap = pairwise_iou(corners[row], boxes.xyxy)  # [A, K]
            scores = output[row, :, 4:5] * output[row, :, 5 + boxes.classes]  # [A, K]
            losses.append((scores * overlap).sum())
        return torch.stack(losses)


class Flip(Rule):
    name = "flip"
    output_kind = CLASSIFICATION

    def judge(self, clean: np.ndarray, attacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        eligible = np.ones(len(clean), bool)
        return eligible, np.asarray(clean).argmax(1) != np.asarray(attacked).argmax(1)

    def loss(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(output, clean.argmax(1), reduction="none")


REGISTRY: dict[str, type[Rule]] = {cls.name: cls for cls in (Hide, Appear, Move, Flip)}
"""The success rules a plan's `[[attacks]] rule` may name."""
