"""Example sheets of an image plan's attack rows: for a few attacked frames, the clean frame and the
attacked one side by side as the gateway answered them (boxes with their class and score, or the
top-1 class), each framed in the colour of the gateway's verdict (replay's colours). A reader sees
what the attack did to the model's answer and whether the guard flagged it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from guard.tools.evaluation.client import Served
from guard.tools.evaluation.image_models import ImageModel
from guard.tools.replay_render import BORDER, COLOURS

TILE = 256  # pixels per side of a tile: four frames, two tiles each, stay a readable page
LABEL_FILES = ("coco.names", "imagenet_classes.txt", "labels.txt")


def class_names(image: ImageModel) -> list[str] | None:
    """The model directory's class names (one per line), where it ships a label file."""
    for name in LABEL_FILES:
        path = image.directory / name
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines()]
    return None


def _label(names: list[str] | None, index: int) -> str:
    return names[index] if names and index < len(names) else str(index)


def _tile(view: np.ndarray, raw: np.ndarray, verdict: str, image: ImageModel, names: list[str] | None) -> Image.Image:
    """One view as the gateway answered it, scaled to TILE pixels on its longer side."""
    picture = Image.fromarray(view)
    scale = TILE / max(picture.size)
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)))
    draw = ImageDraw.Draw(picture)
    if image.boxes is not None:
        (found,) = image.detections(raw[None])
        for box, score, cls in zip(found.xyxy.tolist(), found.scores.tolist(), found.classes.tolist()):
            placed = [v * scale for v in box]
            draw.rectangle(placed, outline=(255, 220, 0), width=2)
            draw.text((placed[0] + 2, placed[1] + 2), f"{_label(names, cls)} {score:.2f}", fill=(255, 220, 0))
    else:
        top = int(np.argmax(raw.reshape(-1)))
        draw.text((BORDER + 4, picture.height - 16), _label(names, top), fill=(255, 255, 255))
    draw.rectangle([0, 0, picture.width - 1, picture.height - 1], outline=COLOURS.get(verdict, (0, 0, 0)), width=BORDER)
    draw.text((BORDER + 4, BORDER + 2), verdict, fill=(255, 255, 255))
    return picture


def example_sheet(
    path: Path,
    image: ImageModel,
    views: np.ndarray,
    attacked: np.ndarray,
    clean: Served,
    served: Served,
    frames: list[int],
) -> Path:
    """A PNG with one row per frame index in `frames`: the clean view and the attacked view (uint8
    [N, h, w, 3], the rows of `clean` and `served`), each as the gateway answered it."""
    names = class_names(image)
    rows = []
    for i in frames:
        left = _tile(views[i], image.raw(clean.logits)[i], str(clean.verdicts[i]), image, names)
        right = _tile(attacked[i], image.raw(served.logits)[i], str(served.verdicts[i]), image, names)
        rows.append((left, right))
    width = max(a.width + b.width for a, b in rows)
    canvas = Image.new("RGB", (width, sum(max(a.height, b.height) for a, b in rows)), (255, 255, 255))
    top = 0
    for left, right in rows:
        canvas.paste(left, (0, top))
        canvas.paste(right, (left.width, top))
        top += max(left.height, right.height)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def pick_examples(successful: np.ndarray, eligible: np.ndarray, count: int = 4) -> list[int]:
    """Up to `count` frames to show: successful attacks first, then eligible frames the attack
    failed on, spread evenly over each group."""
    chosen: list[int] = []
    for group in (np.flatnonzero(successful), np.flatnonzero(eligible & ~successful)):
        room = count - len(chosen)
        if room <= 0 or len(group) == 0:
            continue
        chosen += [int(group[k]) for k in np.linspace(0, len(group) - 1, min(room, len(group))).round().astype(int)]
    return chosen
