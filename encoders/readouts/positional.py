"""Fixed 2D sinusoidal positional encoding."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_2d(channels: int, h: int, w: int) -> Tensor:
    """Return a (channels, h, w) sinusoidal encoding of pixel position.

    The first half of the channels encodes the row (y), the second half the column (x).
    Within each half, channel pairs (2i, 2i+1) hold sin and cos of ``pos * f_i`` with
    ``f_i = 10000 ** (-2i / (channels / 2))``, the Transformer frequencies, and ``pos`` the
    integer pixel index.
    """
    if channels < 4 or channels % 4 != 0:
        raise ValueError(f"channels must be a positive multiple of 4 (sin/cos for y and x), got {channels}")
    if h < 1 or w < 1:
        raise ValueError(f"h and w must be positive, got h={h}, w={w}")
    half = channels // 2
    freqs = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-math.log(10000.0) / half))
    y = torch.arange(h, dtype=torch.float32)[:, None] * freqs  # (h, half/2)
    x = torch.arange(w, dtype=torch.float32)[:, None] * freqs  # (w, half/2)
    encoding = torch.zeros(channels, h, w)
    encoding[0:half:2] = torch.sin(y).T[:, :, None].expand(-1, h, w)
    encoding[1:half:2] = torch.cos(y).T[:, :, None].expand(-1, h, w)
    encoding[half::2] = torch.sin(x).T[:, None, :].expand(-1, h, w)
    encoding[half + 1 :: 2] = torch.cos(x).T[:, None, :].expand(-1, h, w)
    return encoding
