"""Image preprocessing between the data's pixel space and the model's input space.

Pixel space is what the file stores (uint8 0..255, or float). Model space is after grayscale, crop,
resize and z-scoring with statistics of the training tier. The statistics travel with every
checkpoint so that MEIs and reconstructions can be shown, and scored, in pixel space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as PIL's "L" conversion
CHUNK = 512  # images per chunk when preprocessing a whole session, to bound peak memory


@dataclass(frozen=True)
class ImageTransform:
    """Pixel space -> model space: grayscale, crop (top, bottom, left, right), resize, z-score."""

    grayscale: bool = True
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    resize: tuple[int, int] | None = None
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if len(self.crop) != 4 or any(int(c) < 0 for c in self.crop):
            raise ValueError(f"crop must be four non-negative pixel counts (top, bottom, left, right), got {self.crop}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise ValueError(f"resize must be (height, width) with positive sizes, got {self.resize}")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def geometry(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Grayscale, crop and resize a batch (N, H, W) or (N, C, H, W); float32, still pixel units."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        x = x.to(torch.float32)
        if x.ndim == 3:
            x = x[:, None]
        if self.grayscale and x.shape[1] == 3:
            weights = torch.tensor(LUMINANCE, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * weights).sum(1, keepdim=True)
        top, bottom, left, right = (int(c) for c in self.crop)
        if top or bottom or left or right:
            h, w = x.shape[-2:]
            if top + bottom >= h or left + right >= w:
                raise ValueError(f"crop {self.crop} removes the whole {h}x{w} image")
            x = x[..., top : h - bottom, left : w - right]
        if self.resize is not None and tuple(x.shape[-2:]) != tuple(self.resize):
            x = F.interpolate(x, size=tuple(self.resize), mode="bilinear", align_corners=False, antialias=True)
        return x

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Pixel space -> model space."""
        return (self.geometry(images) - self.mean) / self.std

    def apply_chunked(self, images: np.ndarray | object) -> torch.Tensor:
        """Transform a whole (possibly on-disk, h5py) image array in chunks."""
        n = images.shape[0]
        first = self(images[:CHUNK])
        out = torch.empty((n, *first.shape[1:]), dtype=first.dtype)  # filled in place: no second copy from a cat
        out[: len(first)] = first
        for i in range(CHUNK, n, CHUNK):
            out[i : i + CHUNK] = self(images[i : i + CHUNK])
        return out

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pixel space (after geometry), for display and ground-truth scoring."""
        return x * self.std + self.mean

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel space (after geometry) -> model space."""
        return (x - self.mean) / self.std

    def to_rig(
        self, x: torch.Tensor, image_shape: tuple[int, ...], background: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model space -> the stored images' own pixel space in 8 bits: what a recording rig shows.

        The inverse of `__call__` for stored images of shape `image_shape` ((H, W) or (C, H, W)):
        undo the z-score; undo the resize (of the images of the cropped size whose resize is `x`,
        the one nearest the bilinear enlargement of `x`: exact when the stored images are larger
        than the model's input, least squares when smaller); fill the cropped margins with
        `background` (a pixel value; default the training images' mean, `self.mean`); repeat grey
        to the stored channels; round, and clip to 0..255.

        Returns the images (N, *image_shape) as uint8 and, per image, how many pixels (y, x
        positions, any channel) were clipped: the only places where the transform of the result
        differs from `x` by more than the rounding (at most 0.5 pixel values before the z-score).
        """
        x = torch.as_tensor(x).detach().to("cpu", torch.float64)
        image_shape = tuple(int(s) for s in image_shape)
        expected = self.output_shape(image_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images of {tuple(x.shape[1:])} are not in the model space of stored images of "
                             f"shape {image_shape}, which is {expected}")
        channels = image_shape[0] if len(image_shape) == 3 else 1
        height, width = image_shape[-2:]
        top, bottom, left, right = (int(c) for c in self.crop)
        inner = (height - top - bottom, width - left - right)
        pixels = self.to_pixels(x)
        if tuple(pixels.shape[-2:]) != inner:
            pixels = _unresize(pixels, inner)
        if pixels.shape[1] != channels:  # grey model of colour images: the same value in every channel
            pixels = pixels.expand(-1, channels, -1, -1)
        fill = self.mean if background is None else float(background)
        full = torch.full((x.shape[0], channels, height, width), fill, dtype=torch.float64)
        full[..., top : height - bottom, left : width - right] = pixels
        rounded = full.round()
        clipped = ((rounded < 0) | (rounded > 255)).any(1).flatten(1).sum(1)
        images = rounded.clamp(0, 255).to(torch.uint8)
        return (images[:, 0] if len(image_shape) == 2 else images), clipped

    def output_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H, W) in model space for stored images of shape (H, W) or (C, H, W)."""
        return tuple(self.geometry(torch.zeros((1, *image_shape))).shape[1:])

    def state(self) -> dict:
        """Plain-python state for hyperparameters and NetCDF attributes."""
        state = asdict(self)
        state["crop"] = list(state["crop"])
        state["resize"] = list(state["resize"]) if state["resize"] is not None else None
        return state

    @classmethod
    def from_state(cls, state: dict) -> "ImageTransform":
        return cls(
            grayscale=bool(state["grayscale"]),
            crop=tuple(state["crop"]),
            resize=tuple(state["resize"]) if state["resize"] is not None else None,
            mean=float(state["mean"]),
            std=float(state["std"]),
        )


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64: the weights the resize of `ImageTransform.geometry` gives one axis.

    Its bilinear, antialiased resize is separable, so a resize of X (H, W) is My @ X @ Mx.T. Read
    off by resizing basis images (two rows tall: torch treats a one-pixel axis differently).
    """
    basis = torch.eye(n_in, dtype=torch.float32)[:, None, None, :].expand(n_in, 1, 2, n_in)
    out = F.interpolate(basis, size=(2, n_out), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0, 0, :].T.to(torch.float64)


def _unresize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images (N, C, *size) whose resize to x's (h, w) is x: the bilinear enlargement of x, moved by the
    smallest change that makes its resize exact (or closest, in least squares, when enlarging)."""
    my, mx = resize_matrix(size[0], x.shape[-2]), resize_matrix(size[1], x.shape[-1])
    start = F.interpolate(x.to(torch.float32), size=size, mode="bilinear", align_corners=False, antialias=True).to(torch.float64)
    residual = x - my @ start @ mx.T
    return start + torch.linalg.pinv(my) @ residual @ torch.linalg.pinv(mx).T
