"""A core's output grid: its shape, found by a dry run (cheaper to keep right than a formula per architecture),
and where input pixels land on it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from encoders.errors import EncodersError


def dry_run_shape(core: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, h, w) of `core`'s output for one (C_in, H, W) input; BatchNorm statistics stay untouched."""
    was_training = core.training
    param = next(core.parameters())
    core.eval()
    try:
        with torch.no_grad():
            out = core(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    except RuntimeError as error:  # e.g. a kernel larger than the (padded) image
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EncodersError(f"data: images of {tuple(input_shape)} (channels, height, width) in model space do not fit the "
                            f"core ({first}); enlarge data.resize or choose smaller kernels") from None
    finally:
        core.train(was_training)
    return tuple(out.shape[1:])  # type: ignore[return-value]


def pixels_to_cells(xy: torch.Tensor | Sequence, input_hw: Sequence[int], feature_hw: Sequence[int]) -> torch.Tensor:
    """Points (N, 2) as (x, y) in input pixels -> (x, y) feature-grid cell indices (cell centres at 0, 1, ...).

    A grid more than half the input's size is a stride-1 core of valid (unpadded) convolutions, which
    trims the border symmetrically: cell j is centred on input pixel j + (W - w) / 2 (for the stacked
    core, (input_kernel - 1) / 2 pixels in from the edge). A smaller grid (a strided, padded core) is
    taken to scale the input uniformly.
    """
    xy = torch.as_tensor(xy, dtype=torch.float32).reshape(-1, 2)
    size = torch.tensor([float(input_hw[1]), float(input_hw[0])], dtype=xy.dtype)  # (x, y) = (width, height)
    grid = torch.tensor([float(feature_hw[1]), float(feature_hw[0])], dtype=xy.dtype)
    trimmed = xy - (size - grid) / 2
    scaled = (xy + 0.5) * grid / size - 0.5
    return torch.where(grid * 2 > size, trimmed, scaled)


def pixels_to_grid(xy: torch.Tensor | Sequence, input_hw: Sequence[int], feature_hw: Sequence[int]) -> torch.Tensor:
    """Points (N, 2) as (x, y) in input pixels -> (x, y) in grid_sample's [-1, 1] coordinates on the feature
    grid (align_corners=True: -1 and 1 are the border cells' centres), not clipped."""
    cells = pixels_to_cells(xy, input_hw, feature_hw)
    grid = torch.tensor([float(feature_hw[1]), float(feature_hw[0])])
    return torch.where(grid > 1, cells * 2 / (grid - 1).clamp_min(1) - 1, torch.zeros_like(cells))
