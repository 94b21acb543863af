"""Schema checks, for data in memory (before a write) and for files on disk (on open).

Each check raises one `DatasetError` naming the file, the session and the field.

Beyond the schema, data that could not train is refused: a session without images, zero-sized
images, images that are constant over a session (zero pixel standard deviation: z-scoring would
divide by zero), and float values that are not finite, either as stored or once cast to float32
(the dtype training uses). Image values are checked in blocks of images, so a file need not fit
in memory, and for uint8 images the scan stops at the first block that is not constant.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from encoders.datasets.schema import (
    GROUND_TRUTH_GROUP,
    DIMENSIONS,
    REQUIRED_FIELDS,
    SESSIONS_GROUP,
    SUPPORTED_SCHEMA_VERSIONS,
    TIERS,
    SessionData,
)
from encoders.errors import DatasetError

IMAGE_DTYPES = (np.uint8, np.float16, np.float32)  # float16 is widened to float32 on loading
IMAGE_DTYPE_NAMES = "uint8, float16 or float32"
FLOAT32_MAX = float(np.finfo(np.float32).max)
FIRST_IMAGE_BLOCK = 8  # images in the first block of the value scan; blocks then double in size ...
IMAGE_BLOCK_BYTES = 1 << 26  # ... up to this many bytes, so memory stays bounded on large sessions


def validate_session(session: SessionData, path: str | Path) -> None:
    """Check one in-memory session against the schema; `path` names the file it is bound for."""
    sid = session.session_id

    def fail(field: str, problem: str) -> None:
        raise DatasetError(path, problem, session=sid, field=field)

    if not sid or "/" in sid:
        fail("session_id", "must be a non-empty string without '/'")
    images = np.asarray(session.images)
    if images.ndim not in (3, 4):
        fail("images", f"must have rank 3 (image, y, x) or 4 (image, channel, y, x), got shape {images.shape}")
    if images.dtype not in IMAGE_DTYPES:
        fail("images", f"dtype must be {IMAGE_DTYPE_NAMES}, got {images.dtype}")
    _check_image_shape(images.shape, fail)
    n = images.shape[0]
    _check_vector(session.image_ids, n, "image_id", fail)
    if not np.issubdtype(np.asarray(session.image_ids).dtype, np.integer):
        fail("image_id", f"dtype must be an integer type, got {np.asarray(session.image_ids).dtype}")
    _check_unique(session.image_ids, "image_id", fail)
    _check_vector(session.tiers, n, "tier", fail)
    _check_tiers(np.asarray(session.tiers).astype(str), fail)
    responses = np.asarray(session.responses)
    if responses.ndim != 2:
        fail("responses", f"must have rank 2 (image, neuron), got shape {responses.shape}")
    if responses.shape[0] != n:
        fail("responses", f"has {responses.shape[0]} images but images has {n}")
    if not np.issubdtype(responses.dtype, np.floating):
        fail("responses", f"dtype must be floating point, got {responses.dtype}")
    _check_values(responses, "responses", bool(session.attrs.get("spike_counts", 1)), fail)
    n_neurons = responses.shape[1]
    _check_vector(session.neuron_ids, n_neurons, "neuron_id", fail)
    _check_unique(session.neuron_ids, "neuron_id", fail)
    if session.trials is not None:
        trials = np.asarray(session.trials)
        if trials.ndim != 3:
            fail("trials", f"must have rank 3 (image, repeat, neuron), got shape {trials.shape}")
        if trials.shape[0] != n or trials.shape[2] != n_neurons:
            fail("trials", f"shape {trials.shape} does not match {n} images and {n_neurons} neurons")
        if np.isinf(trials).any():
            fail("trials", "contains inf (use NaN for missing repeats)")
        _check_float32(trials, "trials", fail)
        if bool(session.attrs.get("spike_counts", 1)) and (trials < 0).any():
            fail("trials", "contains negative values but spike_counts is declared")
    for name, values in session.neuron_meta.items():
        if name in REQUIRED_FIELDS or name == "trials":
            fail(name, "per-neuron metadata may not reuse a reserved field name")
        _check_vector(values, n_neurons, name, fail)
    for name, values in session.image_meta.items():
        if name in REQUIRED_FIELDS or name in ("trials", *DIMENSIONS) or name in session.neuron_meta:
            fail(name, "per-image metadata may not reuse a reserved, dimension or per-neuron metadata name")
        _check_vector(values, n, name, fail)
    _check_image_values(images, fail)


def validate_file(path: str | Path) -> list[str]:
    """Check a dataset file on disk; return its session ids. Raises `DatasetError` on any problem."""
    with open_file(path) as f:
        return validate_open_file(f, path)


def open_file(path: str | Path) -> h5py.File:
    """The dataset file opened for reading, or `DatasetError` saying why it cannot be."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "file not found")
    if not path.is_file():
        raise DatasetError(path, "is not a file")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(path, f"not a readable HDF5 file (corrupt or truncated?): {error}") from None


def validate_open_file(f: h5py.File, path: str | Path) -> list[str]:
    """`validate_file` on a file already open (one handle serves the checks and the reads that follow)."""
    path = Path(path)
    version = f.attrs.get("schema_version")
    if version is None:
        raise DatasetError(path, "missing root attribute", field="schema_version")
    version = version.decode() if isinstance(version, bytes) else str(version)
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise DatasetError(
            path, f"unknown schema version {version!r}; this encoders reads {SUPPORTED_SCHEMA_VERSIONS}",
            field="schema_version",
        )
    if SESSIONS_GROUP not in f or not isinstance(f[SESSIONS_GROUP], h5py.Group):
        raise DatasetError(path, "missing group", field=SESSIONS_GROUP)
    sessions = sorted(f[SESSIONS_GROUP].keys())
    if not sessions:
        raise DatasetError(path, "holds no sessions", field=SESSIONS_GROUP)
    for sid in sessions:
        _validate_group(f[SESSIONS_GROUP][sid], path, sid)
    if GROUND_TRUTH_GROUP in f and not isinstance(f[GROUND_TRUTH_GROUP], h5py.Group):
        raise DatasetError(path, "must be a group", field=GROUND_TRUTH_GROUP)
    return sessions


def _validate_group(group: h5py.Group, path: Path, sid: str) -> None:
    def fail(field: str, problem: str) -> None:
        raise DatasetError(path, problem, session=sid, field=field)

    for name in REQUIRED_FIELDS:
        if name not in group:
            fail(name, "missing field")
    images = group["images"]
    if images.ndim not in (3, 4):
        fail("images", f"must have rank 3 or 4, got shape {images.shape}")
    if images.dtype not in IMAGE_DTYPES:
        fail("images", f"dtype must be {IMAGE_DTYPE_NAMES}, got {images.dtype}")
    _check_image_shape(images.shape, fail)
    n = images.shape[0]
    image_ids = group["image_id"][()]
    _check_vector(image_ids, n, "image_id", fail)
    if not np.issubdtype(image_ids.dtype, np.integer):
        fail("image_id", f"dtype must be an integer type, got {image_ids.dtype}")
    _check_unique(image_ids, "image_id", fail)
    tiers = group["tier"].asstr()[()] if group["tier"].dtype.kind == "O" else group["tier"][()].astype(str)
    _check_vector(tiers, n, "tier", fail)
    _check_tiers(np.asarray(tiers), fail)
    responses = group["responses"]
    if responses.ndim != 2:
        fail("responses", f"must have rank 2 (image, neuron), got shape {responses.shape}")
    if responses.shape[0] != n:
        fail("responses", f"has {responses.shape[0]} images but images has {n}")
    if responses.dtype.kind != "f":
        fail("responses", f"dtype must be floating point, got {responses.dtype}")
    spike_counts = bool(group.attrs.get("spike_counts", 1))
    _check_values(responses[()], "responses", spike_counts, fail)
    n_neurons = responses.shape[1]
    neuron_ids = group["neuron_id"]
    _check_vector(neuron_ids[()], n_neurons, "neuron_id", fail)
    _check_unique(neuron_ids[()], "neuron_id", fail)
    if "trials" in group:
        trials = group["trials"]
        if trials.ndim != 3:
            fail("trials", f"must have rank 3 (image, repeat, neuron), got shape {trials.shape}")
        if trials.shape[0] != n or trials.shape[2] != n_neurons:
            fail("trials", f"shape {trials.shape} does not match {n} images and {n_neurons} neurons")
        values = trials[()]
        if np.isinf(values).any():
            fail("trials", "contains inf (use NaN for missing repeats)")
        _check_float32(values, "trials", fail)
        if spike_counts and (values < 0).any():
            fail("trials", "contains negative values but spike_counts is declared")
    _check_image_values(images, fail)


def _check_vector(values: np.ndarray, length: int, field: str, fail) -> None:
    values = np.asarray(values)
    if values.ndim != 1:
        fail(field, f"must have rank 1, got shape {values.shape}")
    if values.shape[0] != length:
        fail(field, f"has {values.shape[0]} entries, expected {length}")


def _check_unique(values: np.ndarray, field: str, fail) -> None:
    uniques, counts = np.unique(np.asarray(values), return_counts=True)
    if (counts > 1).any():
        fail(field, f"has duplicate ids, e.g. {uniques[counts > 1][0]!r}")


def _check_tiers(tiers: np.ndarray, fail) -> None:
    unknown = sorted(set(tiers.tolist()) - set(TIERS))
    if unknown:
        fail("tier", f"unknown tier(s) {unknown}; allowed: {list(TIERS)}")
    for tier in TIERS:
        if not (tiers == tier).any():
            fail("tier", f"tier {tier!r} is empty")


def _check_values(responses: np.ndarray, field: str, spike_counts: bool, fail) -> None:
    bad = ~np.isfinite(responses)
    if bad.any():
        fail(field, f"contains {int(bad.sum())} NaN or inf values (averaged responses must be finite)")
    _check_float32(responses, field, fail)
    if spike_counts and (responses < 0).any():
        fail(field, f"contains {int((responses < 0).sum())} negative values but spike_counts is declared")


def _check_image_shape(shape: tuple[int, ...], fail) -> None:
    """A session needs images, and every image needs pixels (rank was checked before)."""
    if shape[0] == 0:
        fail("images", f"the session has no images (shape {shape}); every session needs images in each tier")
    if 0 in shape[1:]:
        sizes = "channels, height and width" if len(shape) == 4 else "height and width"
        fail("images", f"images are zero-sized (shape {shape}); {sizes} must each be at least 1")


def _check_float32(values: np.ndarray, field: str, fail) -> None:
    """Finite values must stay finite when training casts them to float32 (NaN is left to the caller)."""
    values = np.asarray(values)
    if values.dtype.kind != "f" or values.dtype.itemsize <= 4:
        return  # float16/float32 (and integers) always fit
    with np.errstate(over="ignore", invalid="ignore"):
        overflow = np.isinf(values.astype(np.float32)) & np.isfinite(values)
    if overflow.any():
        largest = float(np.abs(values[overflow]).max())
        fail(
            field,
            f"contains {int(overflow.sum())} values that are not finite in float32, the dtype training uses "
            f"(largest magnitude {largest:.3g}; float32 holds magnitudes up to {FLOAT32_MAX:.3g})",
        )


def _check_image_values(images, fail) -> None:
    """Float pixels must be finite and no session may be constant (zero pixel standard deviation).

    `images` is an in-memory array or an h5py dataset of shape (n, ...) with n > 0; it is read in
    blocks of images. Constant-ness compares the session's minimum and maximum pixel, so uint8
    images are read only until two different values were seen (usually the first block).
    """
    n = images.shape[0]
    is_float = images.dtype.kind == "f"
    image_bytes = max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize)
    largest_block = max(1, IMAGE_BLOCK_BYTES // image_bytes)
    low = high = None
    start, size = 0, min(FIRST_IMAGE_BLOCK, largest_block)
    while start < n:
        block = np.asarray(images[start : start + size])
        if is_float:
            finite = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
            if not finite.all():
                first = start + int(np.flatnonzero(~finite)[0])
                fail("images", f"contains NaN or inf pixel values (first in image index {first} of {n}); float images must be finite")
        low = block.min() if low is None else min(low, block.min())
        high = block.max() if high is None else max(high, block.max())
        if low < high and not is_float:
            return  # not constant, and uint8 pixels need no other check
        start += size
        size = min(2 * size, largest_block)
    if low == high:
        fail(
            "images",
            f"all {n} images are constant (every pixel is {low.item()!r}): zero pixel standard deviation, "
            "so z-scoring would divide by zero; a session needs at least two different pixel values",
        )
