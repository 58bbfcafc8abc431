"""The backdoor trigger file `guard evaluate` applies: an .npz with `mask` and `pattern`.

A trigger is x' = clip(x * (1 - mask) + pattern * mask, 0, 1), computed in float32. That one
rule covers the usual families: a stamped patch (mask 1 on the patch, 0 elsewhere; the patch's
pixels become the pattern), a blended trigger (mask = alpha everywhere) and anything between.
It lives here, in the library, so an installed guard can replay the exact trigger a model was
poisoned with from a file, without the recipe code that made the trigger. Both arrays must
broadcast to one item's shape (e.g. [H, W] or [C, H, W] for images [N, C, H, W]); values in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.protocol.errors import ConfigError

KEYS = ("mask", "pattern")


@dataclass(frozen=True, eq=False)
class MaskTrigger:
    mask: np.ndarray
    """float32 in [0, 1]: how much of each value the pattern replaces."""
    pattern: np.ndarray
    """float32 in [0, 1]: what replaces it."""
    source: str = "trigger"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Triggered float32 copies of x [N, ...]; the caller's array is never written to."""
        x = np.asarray(x, dtype=np.float32)
        try:
            np.broadcast_shapes(self.mask.shape, x.shape[1:])
        except ValueError:
            raise ConfigError(
                self.source,
                "mask",
                f"a mask that broadcasts to the samples' shape {list(x.shape[1:])}",
                list(self.mask.shape),
            ) from None
        # Stamps (mask 0/1) reproduce x or the pattern exactly; the clip only absorbs rounding.
        return np.clip(x * (1 - self.mask) + self.pattern * self.mask, 0.0, 1.0).astype(np.float32, copy=False)

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:  # a file object keeps numpy from appending ".npz" to other suffixes
            np.savez(f, mask=self.mask, pattern=self.pattern)
        return path


def _array(path: Path, data, key: str) -> np.ndarray:
    if key not in data:
        raise ConfigError(path, key, f"an array '{key}' (trigger files hold {' and '.join(KEYS)})")
    value = np.asarray(data[key])
    if not np.issubdtype(value.dtype, np.number) or value.dtype.kind == "c":
        raise ConfigError(path, key, "a real-valued array", str(value.dtype))
    value = value.astype(np.float32)
    if value.size == 0 or not np.isfinite(value).all() or value.min() < 0.0 or value.max() > 1.0:
        raise ConfigError(path, key, "a non-empty array of finite values in [0, 1]")
    value.flags.writeable = False
    return value


def trigger_from_arrays(mask: np.ndarray, pattern: np.ndarray, source: str = "trigger") -> MaskTrigger:
    """A validated trigger from in-memory arrays (what `load_trigger` checks in a file)."""
    return _checked(source, {"mask": mask, "pattern": pattern})


def _checked(source, data) -> MaskTrigger:
    mask, pattern = _array(source, data, "mask"), _array(source, data, "pattern")
    try:
        np.broadcast_shapes(mask.shape, pattern.shape)
    except ValueError:
        raise ConfigError(
            source,
            "pattern",
            f"a pattern whose shape broadcasts with the mask's {list(mask.shape)}",
            list(pattern.shape),
        ) from None
    return MaskTrigger(mask, pattern, str(source))


def load_trigger(path: Path) -> MaskTrigger:
    """Read and check a trigger file; a bad file is a ConfigError naming it and the array."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(path, "(file)", f"an .npz with arrays {' and '.join(KEYS)} ({exc})") from None
    with data:
        if not hasattr(data, "files"):
            raise ConfigError(path, "(file)", f"an .npz with arrays {' and '.join(KEYS)}, not a single array")
        return _checked(path, {k: data[k] for k in data.files})
