"""Object-detection outputs: the box formats models emit, decoded into boxes, scores and classes,
and how two sets of boxes agree. Detectors of detection models compare the boxes a model finds on
a frame with those it finds on a squeezed or occluded copy of it.

Formats (declared per model, `[boxes] format`):
- `yolo`: [A, 5 + C] per image, one row per anchor: centre x, centre y, width, height (input
  pixels), objectness, C class scores (probabilities); a box's score is objectness x its best class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

FORMATS = ("yolo",)


@dataclass(frozen=True)
class BoxSettings:
    format: str = "yolo"
    score_threshold: float = 0.25
    """Boxes scoring below this are not detections."""
    iou_threshold: float = 0.45
    """Non-maximum suppression: a box overlapping a better one of its class by more is dropped."""
    max_detections: int = 100


@dataclass
class Boxes:
    """One image's detections."""

    xyxy: torch.Tensor
    """[K, 4] corners in input pixels."""
    scores: torch.Tensor
    classes: torch.Tensor


def decode(raw: torch.Tensor, settings: BoxSettings) -> list[Boxes]:
    """Detections per image from a [B, A, 5 + C] raw output (any leading dims are flattened)."""
    from torchvision.ops import batched_nms  # lazy: torchvision costs ~150 MB a process that never needs boxes

    raw = raw.reshape(-1, raw.shape[-2], raw.shape[-1]).float()
    class_scores, classes = raw[..., 5:].max(-1)
    scores = raw[..., 4] * class_scores
    centre, size = raw[..., :2], raw[..., 2:4]
    corners = torch.cat([centre - size / 2, centre + size / 2], -1)
    found = []
    for image in range(raw.shape[0]):
        keep = scores[image] >= settings.score_threshold
        xyxy, score, cls = corners[image][keep], scores[image][keep], classes[image][keep]
        kept = batched_nms(xyxy, score, cls, settings.iou_threshold)[: settings.max_detections]
        found.append(Boxes(xyxy[kept], score[kept], cls[kept]))
    return found


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[A, 4] x [B, 4] boxes (x1, y1, x2, y2) -> [A, B] IoU: torchvision's box_iou, imported when
    boxes are compared (it costs ~150 MB a process that never compares boxes, and torchvision is an
    extra: guard[video])."""
    from torchvision.ops import box_iou

    overlap: torch.Tensor = box_iou(a, b)
    return overlap


def disagreement(a: Boxes, b: Boxes, iou: float = 0.5) -> float:
    """How much two images' detections disagree, in [0, 1]: the largest change of any object's score.
    Boxes are matched one-to-one (same class, IoU >= iou, greedily by IoU); a matched pair counts its
    score difference, a box without a match its own score (it fell below the other set's floor).
    Two empty sets agree (0).

    Graded rather than counted: a count of matched boxes (1 - F1) jumps from 0 to 1 when one box
    crosses the score threshold in one copy and not the other, so on clean frames with a marginal
    box it is 1.0 as often as an attack makes it, and no threshold or per-camera normalisation can
    separate the two. A score difference moves as far as the answer moved, and decoding at a low
    floor (the detectors' `floor`) lets a box that merely dipped be matched instead of lost."""
    if len(a.scores) == 0 or len(b.scores) == 0:
        return float(torch.cat([a.scores, b.scores]).max()) if len(a.scores) + len(b.scores) else 0.0
    overlap = pairwise_iou(a.xyxy, b.xyxy)
    overlap[a.classes[:, None] != b.classes[None, :]] = 0.0
    lone_a = torch.ones(len(a.scores), dtype=torch.bool, device=a.scores.device)
    lone_b = torch.ones(len(b.scores), dtype=torch.bool, device=b.scores.device)
    gap = 0.0
    while True:
        best = overlap.max()
        if best < iou:
            break
        i, j = divmod(int(overlap.argmax()), overlap.shape[1])
        gap = max(gap, abs(float(a.scores[i]) - float(b.scores[j])))
        lone_a[i] = lone_b[j] = False
        overlap[i, :] = 0.0
        overlap[:, j] = 0.0
    lone: list[float] = a.scores[lone_a].tolist() + b.scores[lone_b].tolist()
    return max([gap, *lone])


def disagreements(
    original: torch.Tensor, variant: torch.Tensor, settings: BoxSettings, floor: float, iou: float
) -> torch.Tensor:
    """[B] disagreement of each image's raw boxes with its variant's, both decoded down to `floor`
    (not the model's score threshold: a box that dips below it must still be matched)."""
    low = replace(settings, score_threshold=min(floor, settings.score_threshold))
    pairs = zip(decode(original, low), decode(variant, low))
    return torch.tensor([disagreement(a, b, iou) for a, b in pairs], device=original.device)
