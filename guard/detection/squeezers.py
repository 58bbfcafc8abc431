"""Feature squeezers (Xu, Evans, Qi, NDSS 2018) as batched torch operations on [N, C, H, W].

They reduce the input's degrees of freedom; an adversarial perturbation that the squeeze removes
changes the model's prediction, a clean input's prediction mostly survives it.
"""

from __future__ import annotations

import functools

import torch


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantise [0, 1] inputs to 2**bits levels: round(x * (2^b - 1)) / (2^b - 1)."""
    levels = float(2**bits - 1)
    return torch.round(x * levels) / levels


@functools.lru_cache(maxsize=64)
def _symmetric_index(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    # Half-sample symmetric padding (d c b a | a b c d | d c b a), scipy.ndimage's "reflect".
    # Cached: image sizes repeat, and building the index costs more than using it. Built outside
    # inference mode, so a cached index also serves autograd users (the adaptive attack).
    with torch.inference_mode(False):
        index = torch.arange(-before, length + after, device=device)
        index = torch.where(index < 0, -index - 1, index)
        return torch.where(index >= length, 2 * length - index - 1, index)


def median(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median over a size x size window per channel, with scipy.ndimage.median_filter semantics.

    The window covers offsets -size//2 .. size-1-size//2 and, for even sizes, takes the upper of
    the two middle values (scipy's rank size*size//2), so results match the paper's reference code.
    """
    if size == 1:
        return x
    height, width = x.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"median window {size} exceeds the image size {height}x{width}")
    before, after = size // 2, size - 1 - size // 2
    rows = _symmetric_index(height, before, after, x.device)
    cols = _symmetric_index(width, before, after, x.device)
    padded = x.index_select(-2, rows).index_select(-1, cols)
    if size == 2:  # the paper's usual window: a min/max network beats a general selection ~5x
        return _upper_median_2x2(padded, height, width)
    windows = padded.unfold(-2, size, 1).unfold(-2, size, 1)  # [..., H, W, size, size]
    flat = windows.reshape(*windows.shape[:-2], size * size)
    return flat.kthvalue(size * size // 2 + 1, dim=-1).values


def _upper_median_2x2(padded: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # The upper median of four values is the second largest: the smaller of the two pair
    # maxima or the larger of the two pair minima, whichever is larger.
    a, b = padded[..., :height, :width], padded[..., :height, 1 : width + 1]
    c, d = padded[..., 1 : height + 1, :width], padded[..., 1 : height + 1, 1 : width + 1]
    return torch.maximum(
        torch.minimum(torch.maximum(a, b), torch.maximum(c, d)), torch.maximum(torch.minimum(a, b), torch.minimum(c, d))
    )
