"""Where an encoding model's input lies in a synthetic twin's stored pixels: the one mapping between them.

A model sees the stored images (``image_size`` x ``image_size``, pixel units) through an
`ImageTransform`: grayscale, crop (top, bottom, left, right), resize to the model's input size,
z-score. The twin's true neurons see the stored images themselves. So a model-space image reaches
a true neuron as: `transform.to_pixels`, resize back to the size of the CROPPED region, placed
into a full frame at the crop's position; the border the model never saw is filled with the
data's mean pixel value (what 0 means in model space). The true neuron then sees the image where
the model saw it, at the scale the model saw it.

Coordinates go the other way for receptive fields: a point in stored pixels -> the model's input
pixels -> the core's feature grid. Pixel centres sit at integer indices (0, 1, ...), so a pixel's
edges are at +-0.5 and a resize maps the region's edges onto the input's edges.

Everything that scores a model's images on a twin (MEI scores, true-activation energies, the
compare scorer, the test correlation with the truth) and the true RF centres in readout figures
go through :class:`TwinGeometry`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from encoders.cores.output_shape import pixels_to_cells
from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError


class TwinGeometry:
    """A model's input space (`transform`, `input_shape` (C, H, W)) within the twin's stored `image_size`."""

    def __init__(self, transform: ImageTransform, input_shape: Sequence[int], image_size: int):
        self.transform = transform
        self.input_shape = tuple(int(s) for s in input_shape)
        self.image_size = int(image_size)
        if len(self.input_shape) != 3:
            raise EncodersError(f"input_shape must be (channels, height, width), got {self.input_shape}")
        if self.input_shape[0] != 1:
            raise EncodersError(f"the twin's neurons see one grayscale channel; the model's input has {self.input_shape[0]}")
        top, bottom, left, right = (int(c) for c in transform.crop)
        if top + bottom >= self.image_size or left + right >= self.image_size:
            raise EncodersError(f"crop {tuple(transform.crop)} removes the twin's whole {self.image_size}x{self.image_size} image")
        self.crop = (top, bottom, left, right)
        # the stored region the model sees, (height, width), before its resize
        self.region = (self.image_size - top - bottom, self.image_size - left - right)
        # 0 in model space: the data's mean pixel value; the twin sees it where the model saw nothing
        self.fill = float(transform.to_pixels(torch.zeros(())))

    @property
    def cropped(self) -> bool:
        return any(self.crop)

    def to_twin(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space images (B, 1, H, W) -> the twin's input (B, 1, image_size, image_size), pixel units."""
        return self.place(self.transform.to_pixels(images))

    def place(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in the model's input geometry, already in pixel units (B, 1, H, W) -> the twin's input.

        Resized (bilinear; antialiased where it shrinks) to the cropped region and placed at the
        crop's position in a frame of the mean pixel value. Differentiable.
        """
        if pixels.ndim != 4 or pixels.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(pixels.shape)}")
        size = tuple(pixels.shape[-2:])
        if size != self.region:
            shrinking = self.region[0] < size[0] or self.region[1] < size[1]
            pixels = F.interpolate(pixels, size=self.region, mode="bilinear", align_corners=False, antialias=shrinking)
        if not self.cropped:
            return pixels
        top, bottom, left, right = self.crop
        return F.pad(pixels, (left, right, top, bottom), mode="constant", value=self.fill)

    def to_model_pixels(self, xy: torch.Tensor) -> torch.Tensor:
        """Points (N, 2) as (x, y) in stored pixels -> (x, y) in the model's input pixels (cropped, resized)."""
        xy = torch.as_tensor(xy, dtype=torch.float32)
        _, height, width = self.input_shape
        top, _, left, _ = self.crop
        origin = torch.tensor([left, top], dtype=xy.dtype)
        scale = torch.tensor([width / self.region[1], height / self.region[0]], dtype=xy.dtype)
        return (xy - origin + 0.5) * scale - 0.5  # the resize maps the region's edges onto the input's

    def rf_centres_on_grid(self, rf_xy: torch.Tensor, feature_shape: Sequence[int]) -> torch.Tensor:
        """True receptive-field centres (N, 2) as (x, y) in stored pixels -> (x, y) on the core's feature grid.

        In grid-cell indices (cell centres at 0, 1, ...), for a grid of `feature_shape` (height,
        width), by `encoders.cores.output_shape.pixels_to_cells`.
        """
        return pixels_to_cells(self.to_model_pixels(rf_xy), self.input_shape[1:], feature_shape)
