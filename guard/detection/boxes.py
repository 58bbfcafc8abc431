"""Object-detection outputs: the box formats models emit, decoded into boxes, scores and classes,
and how two sets of boxes agree. Detectors of detection models compare the boxes a model finds on
a frame with those it finds on a squeezed or occluded copy of it.

Formats (declared per model, `[boxes] format`):
- `yolo`: [A, 5 + C] per image, one row per anchor: centre x, centre y, width, height (input
  pixels), objectness, C class scores (probabilities); a box's score is objectness x its best class.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        kept = batched_nms(xyxy, score, cls, settings.iou_threshold)[:settings.max_detections]
        found.append(Boxes(xyxy[kept], score[kept], cls[kept]))
    return found


def disagreement(a: Boxes, b: Boxes, iou: float = 0.5) -> float:
    """How much two images' detections disagree, in [0, 2]: 1 - F1 of boxes matched one-to-one
    (same class, IoU >= iou, greedily by IoU) plus the mean score change over the matched pairs.
    Two empty sets agree (0)."""
    if len(a.scores) == 0 and len(b.scores) == 0:
        return 0.0
    if len(a.scores) == 0 or len(b.scores) == 0:
        return 1.0
    from torchvision.ops import box_iou

    overlap = box_iou(a.xyxy, b.xyxy)
    overlap[a.classes[:, None] != b.classes[None, :]] = 0.0
    matched, shift = 0, 0.0
    while True:
        best = overlap.max()
        if best < iou:
            break
        i, j = divmod(int(overlap.argmax()), overlap.shape[1])
        matched += 1
        shift += abs(float(a.scores[i]) - float(b.scores[j]))
        overlap[i, :] = 0.0
        overlap[:, j] = 0.0
    f1 = 2 * matched / (len(a.scores) + len(b.scores))
    return (1.0 - f1) + (shift / matched if matched else 0.0)
