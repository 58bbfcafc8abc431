"""Small helpers shared by the seeded training recipes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # All ops the recipes use have deterministic CPU kernels, so this should never raise.
    torch.use_deterministic_algorithms(True)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the previous count afterwards.

    Float sums are reduced in a thread-count-dependent order, so without this the trained
    weights (and the shipped ONNX bytes) would depend on how many cores the machine has.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each [C,H,W] image by integers in [-max_shift, max_shift], zero-filling edges."""
    if max_shift == 0:
        return x
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=gen).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
