"""A core's output shape, found by a dry run (cheaper to keep right than a formula per architecture)."""

from __future__ import annotations

import torch
from torch import nn


def dry_run_shape(core: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, h, w) of `core`'s output for one (C_in, H, W) input; BatchNorm statistics stay untouched."""
    was_training = core.training
    param = next(core.parameters())
    core.eval()
    try:
        with torch.no_grad():
            out = core(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        core.train(was_training)
    return tuple(out.shape[1:])  # type: ignore[return-value]
