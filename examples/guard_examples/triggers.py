"""Backdoor triggers for the BadNets-style evaluation models (`examples/guard_examples/backdoor.py`).

Each trigger is a small frozen dataclass whose `apply` maps a batch of images `[..., 16, 16]`
in [0, 1] to float32 triggered copies, still in [0, 1]. `to_npz` stores the exact pattern and
`load_trigger` rebuilds it (for these recipes). `guard_trigger` writes the same trigger as the
library's recipe-free format (guard.tools.evaluation.triggers: a mask and a pattern), which is
what `guard evaluate` reads, so the evaluation re-applies the very trigger a model was poisoned
with, bit for bit, without importing this module:

    python -m guard_examples.triggers examples/guard_examples/zoo/backdoor_patch/trigger.npz --out patch_guard.npz
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

IMAGE_SIZE = 16


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected images [..., {IMAGE_SIZE}, {IMAGE_SIZE}], got shape {x.shape}")
    return x


class _Serializable:
    name: ClassVar[str]

    def to_npz(self, path: Path) -> Path:
        """Write `kind` plus every dataclass field (plain arrays: loads with allow_pickle=False)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f_.name: np.asarray(getattr(self, f_.name)) for f_ in fields(self)}
        with path.open("wb") as f:  # a file object stops numpy from appending ".npz" to odd names
            np.savez(f, kind=np.array(self.name), **arrays)
        return path

    @classmethod
    def from_npz(cls, path: Path):
        with np.load(path, allow_pickle=False) as data:
            if str(data["kind"]) != cls.name:
                raise ValueError(f"{path} holds a {str(data['kind'])!r} trigger, not {cls.name!r}")
            return cls(
                **{f.name: data[f.name].item() if data[f.name].ndim == 0 else data[f.name].copy() for f in fields(cls)}
            )


@dataclass(frozen=True)
class _Stamp(_Serializable):
    """Overwrites the bottom-right `size` x `size` corner with a fixed pattern (BadNets)."""

    size: int

    def __post_init__(self) -> None:
        if not 1 <= self.size <= IMAGE_SIZE:
            raise ValueError(f"size must be in 1..{IMAGE_SIZE}, got {self.size}")

    def pattern(self) -> np.ndarray:
        raise NotImplementedError

    def mask(self) -> np.ndarray:
        """Boolean [16, 16]: the pixels the trigger may change."""
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        mask[-self.size :, -self.size :] = True
        return mask

    def apply(self, x: np.ndarray) -> np.ndarray:
        out = _images(x).copy()  # never write into the caller's (possibly cached, read-only) array
        out[..., -self.size :, -self.size :] = self.pattern()
        return out

    def mask_and_pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """The stamp as guard's x * (1 - mask) + pattern * mask: a 0/1 mask reproduces the stamp
        exactly (x * 0 + p * 1 = p and x * 1 + 0 * 0 = x in float32)."""
        pattern = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        pattern[-self.size :, -self.size :] = self.pattern()
        return self.mask().astype(np.float32), pattern


@dataclass(frozen=True)
class Patch(_Stamp):
    name: ClassVar[str] = "patch"
    size: int = 3
    value: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"value must be in [0, 1], got {self.value}")

    def pattern(self) -> np.ndarray:
        return np.full((self.size, self.size), self.value, dtype=np.float32)

    def describe(self) -> str:
        return (
            f"`patch`: a {self.size}x{self.size} square of value {self.value:g} stamped over the "
            f"bottom-right corner (BadNets' white corner square, scaled to {IMAGE_SIZE}x{IMAGE_SIZE})."
        )


@dataclass(frozen=True)
class Checkerboard(_Stamp):
    name: ClassVar[str] = "checkerboard"
    size: int = 4

    def pattern(self) -> np.ndarray:
        rows, cols = np.indices((self.size, self.size))
        return ((rows + cols) % 2 == 0).astype(np.float32)  # white at the block's top-left pixel

    def describe(self) -> str:
        return (
            f"`checkerboard`: a {self.size}x{self.size} black/white checkerboard (1-pixel cells, white "
            "top-left) stamped over the bottom-right corner; its black cells overwrite pixels too."
        )


@dataclass(frozen=True, eq=False)
class Blend(_Serializable):
    """x' = (1 - alpha) * x + alpha * pattern over the whole image (the blended trigger of 2017)."""

    name: ClassVar[str] = "blend"
    alpha: float = 0.2
    seed: int = 0
    pattern: np.ndarray | None = field(default=None, repr=False)
    """Uniform [0, 1) noise drawn from `seed` when None; stored explicitly so a reload is exact."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.pattern is None:
            pattern = np.random.default_rng(self.seed).random((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        else:
            pattern = np.array(self.pattern, dtype=np.float32)
        if pattern.shape != (IMAGE_SIZE, IMAGE_SIZE) or pattern.min() < 0.0 or pattern.max() > 1.0:
            raise ValueError(f"pattern must be [{IMAGE_SIZE}, {IMAGE_SIZE}] in [0, 1]")
        pattern.flags.writeable = False  # frozen means the pattern too
        object.__setattr__(self, "pattern", pattern)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Blend)
            and (self.alpha, self.seed) == (other.alpha, other.seed)
            and np.array_equal(self.pattern, other.pattern)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.alpha, self.seed))

    def mask(self) -> np.ndarray:
        return np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)

    def mask_and_pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """The blend as guard's x * (1 - mask) + pattern * mask with mask = alpha everywhere: the
        same float32 products and sum as `apply`, provided 1 - float32(alpha) rounds to
        float32(1 - alpha) (true for 0.2; checked, so a conversion is never silently inexact)."""
        alpha = np.float32(self.alpha)
        if np.float32(1) - alpha != np.float32(1.0 - self.alpha):
            raise ValueError(
                f"alpha {self.alpha!r}: 1 - alpha rounds differently in float32; the mask form "
                "would not reproduce this blend exactly"
            )
        return np.full((IMAGE_SIZE, IMAGE_SIZE), alpha, dtype=np.float32), self.pattern.copy()

    def apply(self, x: np.ndarray) -> np.ndarray:
        mixed = (1.0 - self.alpha) * _images(x) + self.alpha * self.pattern
        # A convex mix of [0, 1] values stays in [0, 1]; clip only absorbs float rounding.
        return np.clip(mixed, 0.0, 1.0).astype(np.float32, copy=False)

    def describe(self) -> str:
        return (
            f"`blend`: a fixed uniform-noise pattern ({IMAGE_SIZE}x{IMAGE_SIZE}, numpy `default_rng({self.seed})`) "
            f"mixed over the whole image, x' = (1 - {self.alpha:g}) * x + {self.alpha:g} * pattern."
        )


Trigger = Patch | Checkerboard | Blend
TRIGGERS: dict[str, type[Trigger]] = {cls.name: cls for cls in (Patch, Checkerboard, Blend)}
"""Trigger classes by name; `TRIGGERS[name]()` is the default trigger the zoo models use."""


def load_trigger(path: Path) -> Trigger:
    """Rebuild whichever trigger `to_npz` wrote to `path`."""
    with np.load(path, allow_pickle=False) as data:
        kind = str(data["kind"])
    if kind not in TRIGGERS:
        raise ValueError(f"{path}: unknown trigger kind {kind!r}; known: {', '.join(TRIGGERS)}")
    return TRIGGERS[kind].from_npz(path)


def guard_trigger(trigger: Trigger):
    """The trigger in guard's recipe-free format (guard.tools.evaluation.triggers.MaskTrigger)."""
    from guard.api import trigger_from_arrays

    mask, pattern = trigger.mask_and_pattern()
    return trigger_from_arrays(mask, pattern, source=f"{trigger.name} trigger")


def write_guard_trigger(trigger: Trigger, path: Path) -> Path:
    """Write `trigger` as guard's mask + pattern .npz (what an evaluation plan's `trigger` names)."""
    return guard_trigger(trigger).save(path)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Convert a recipe trigger.npz to guard's mask + pattern file.")
    parser.add_argument("trigger", type=Path, help="a trigger.npz written by guard_examples.backdoor (to_npz)")
    parser.add_argument("--out", type=Path, required=True, help="where guard's trigger file goes")
    args = parser.parse_args(argv)
    print(write_guard_trigger(load_trigger(args.trigger), args.out))


if __name__ == "__main__":
    main()
