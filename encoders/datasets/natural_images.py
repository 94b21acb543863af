"""Natural-image stimuli from photographs bundled inside installed wheels (no network).

The photographs are the files behind scikit-image's ``skimage.data`` (only images shipped
inside the wheel, never the pooch-downloaded ones) and scikit-learn's ``load_sample_images``
(china, flower), read directly with PIL. Stimuli are random square crops of them, converted to
grayscale and resized with an antialiasing (Lanczos) filter, so the same seed gives the same
pixels on any machine with the same library versions.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# Photographs and natural textures only: microscopy, astronomy, text and synthetic images are
# left out because their statistics are far from what a V4 neuron sees. (package, file) pairs:
# the files that skimage.data.<name>() and sklearn's load_sample_images() read, opened directly
# with PIL so that neither library (seconds of import time) has to be imported.
_SOURCES = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
)

MIN_SCALE = 0.25
MAX_SCALE = 1.0


def _to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601 weights) of an RGB(A) or gray image as uint8."""
    image = np.asarray(image)
    if image.ndim == 3:
        rgb = image[..., :3].astype(np.float64)
        image = np.clip(np.rint(rgb @ np.array([0.299, 0.587, 0.114])), 0, 255)
    return np.ascontiguousarray(image, dtype=np.uint8)


def _package_dir(package: str) -> Path:
    """Install directory of a package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed; the natural-image pool needs its "
                           "bundled photographs")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _load_sources() -> tuple[tuple[str, Image.Image], ...]:
    """Load every source photograph once per process as a grayscale PIL image."""
    sources: list[tuple[str, Image.Image]] = []
    for package, relative in _SOURCES:
        path = _package_dir(package) / relative
        if not path.is_file():  # a missing file must not silently change the data
            raise RuntimeError(f"{path} is missing from the installed {package}; the "
                               "natural-image pool needs it to be reproducible")
        with Image.open(path) as image:
            pixels = _to_gray_uint8(np.asarray(image))
        sources.append((f"{package}/{relative}", Image.fromarray(pixels, "L")))
    return tuple(sources)


def source_image_names() -> list[str]:
    """Names of the source photographs, in the order the crops index them (provenance)."""
    return [name for name, _ in _load_sources()]


def natural_image_pool(n: int, size: int, seed: int) -> np.ndarray:
    """Draw ``n`` random grayscale crops of the bundled photographs.

    Each crop picks a source uniformly, a square side uniform in [0.25, 1] of the source's
    short side, a uniform position, and a horizontal flip with probability 1/2, then is
    resized to ``size`` x ``size`` with Lanczos antialiasing.

    Returns an array of shape ``(n, size, size)``, dtype uint8; identical for the same seed.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    sources = _load_sources()
    rng = np.random.default_rng(seed)
    # All random numbers are drawn up front in fixed order so that crop i does not depend on
    # how the loop below is written.
    which = rng.integers(0, len(sources), size=n)
    scale = rng.uniform(MIN_SCALE, MAX_SCALE, size=n)
    position = rng.uniform(0.0, 1.0, size=(n, 2))
    flip = rng.random(n) < 0.5

    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        image = sources[which[i]][1]
        width, height = image.size
        side = max(1, int(round(scale[i] * min(width, height))))
        left = int(position[i, 0] * (width - side + 1))
        top = int(position[i, 1] * (height - side + 1))
        # reducing_gap=2 box-reduces large crops before the Lanczos pass: ~3x faster and
        # still antialiased (PIL documents it as close to a full Lanczos resample).
        crop = image.resize((size, size), Image.Resampling.LANCZOS,
                            box=(left, top, left + side, top + side), reducing_gap=2.0)
        if flip[i]:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out
