"""Converter for the macaque V4 release of Cowley et al. 2023 ("Compact deep neural network models
of visual cortex"; github cowleygroup/V4_compact_models, folder data_V4_responses/), in its own layout:

    images/images_<session>.zip                      imageNNNN.jpg, 1-based, 112x112x3 uint8
    responses_repeat_averaged/responses_<session>.npy  (neurons, images) float64, column i = image i+1
    responses_raw/responses_<session>.npy             (neurons, images, repeats), NaN = missing repeat

Split (deterministic, documented in data/README.md): within each session, images are permuted by a
generator seeded with (seed, crc32(session id)); the first `test_fraction` of the permutation is the
test tier, the next `validation_fraction` the validation tier, the rest train.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from encoders.datasets.image_files import ImageSource, read_images
from encoders.datasets.io import write_dataset
from encoders.datasets.schema import SessionData
from encoders.datasets.splits import split_tiers
from encoders.errors import DatasetError

# Facts about the source recordings (Ext. Data Table 1 of the paper), not experiment settings.
ANIMALS = {"1909": "WE", "2010": "PE", "2102": "PE", "2103": "PE", "2106": "RA", "2110": "RA", "2111": "RA"}


def available_sessions(source_dir: str | Path) -> list[str]:
    """Session ids with a repeat-averaged response file in the source folder."""
    folder = Path(source_dir) / "responses_repeat_averaged"
    if not folder.is_dir():
        raise DatasetError(folder, "folder not found; expected the Cowley et al. 2023 layout (data_V4_responses/)")
    return sorted(p.stem.removeprefix("responses_") for p in folder.glob("responses_*.npy"))


def read_cowley_session(
    source_dir: str | Path, session: str, validation_fraction: float, test_fraction: float, seed: int
) -> SessionData:
    """One session of the source release as `SessionData` (images kept as colour uint8)."""
    source_dir = Path(source_dir)
    resp_path = source_dir / "responses_repeat_averaged" / f"responses_{session}.npy"
    responses = _load_npy(resp_path, ndim=2)  # (neurons, images)
    n_neurons, n_images = responses.shape
    zip_path = source_dir / "images" / f"images_{session}.zip"
    images = _read_images(zip_path, n_images, session)
    trials = None
    raw_path = source_dir / "responses_raw" / f"responses_{session}.npy"
    if raw_path.exists():
        raw = _load_npy(raw_path, ndim=3)  # (neurons, images, repeats)
        if raw.shape[:2] != responses.shape:
            raise DatasetError(raw_path, f"shape {raw.shape} does not match averaged responses {responses.shape}", field="responses_raw")
        trials = np.ascontiguousarray(np.transpose(raw, (1, 2, 0)))
    return SessionData(
        session_id=session,
        images=images,
        image_ids=np.arange(1, n_images + 1, dtype=np.int64),
        responses=np.ascontiguousarray(responses.T),
        tiers=split_tiers(n_images, session, validation_fraction, test_fraction, seed),
        neuron_ids=np.array([f"{session}-{i:03d}" for i in range(n_neurons)]),
        trials=trials,
        neuron_meta={"source_row": np.arange(n_neurons, dtype=np.int64)},
        attrs={
            "units": "spike counts in a 100 ms window, averaged over repeats",
            "spike_counts": 1,
            "animal": ANIMALS.get(session[:4], "unknown"),
            "provenance": f"Cowley et al. 2023 V4 release: {zip_path.name}, {resp_path.name}"
            + (f", {raw_path.name}" if trials is not None else ""),
            "split": f"seed={seed}, validation_fraction={validation_fraction}, test_fraction={test_fraction}",
        },
    )


def convert_cowley2023(
    source_dir: str | Path,
    out: str | Path,
    sessions: Sequence[str] | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> list[str]:
    """Convert the release (all sessions, or those named) into one dataset file, atomically."""
    known = available_sessions(source_dir)
    chosen = list(sessions) if sessions else known
    missing = [s for s in chosen if s not in known]
    if missing:
        raise DatasetError(Path(source_dir) / "responses_repeat_averaged", f"no response file for session(s) {missing}; found {known}")

    def generate() -> Iterator[SessionData]:
        for session in chosen:
            yield read_cowley_session(source_dir, session, validation_fraction, test_fraction, seed)

    return write_dataset(
        out,
        generate(),
        attrs={
            "title": "Macaque V4 responses to natural images (Cowley et al. 2023)",
            "source": "github.com/cowleygroup/V4_compact_models data_V4_responses (GPL-3.0)",
            "converter": "encoders prepare cowley2023",
        },
    )


def _load_npy(path: Path, ndim: int) -> np.ndarray:
    if not path.exists():
        raise DatasetError(path, "file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DatasetError(path, f"not a readable .npy array: {error}") from None
    if array.ndim != ndim:
        raise DatasetError(path, f"expected rank {ndim}, got shape {array.shape}")
    return array


def _read_images(zip_path: Path, n_images: int, session: str) -> np.ndarray:
    """imageNNNN.jpg 1..n_images of the zip as (n, 3, H, W) uint8; a corrupt archive or image is named in one line."""
    if not zip_path.exists():
        raise DatasetError(zip_path, "file not found")
    ids, images = read_images(ImageSource(zip=str(zip_path), pattern=r"^image(\d+)\.jpg$", channels=3), session=session)
    expected = np.arange(1, n_images + 1)
    if not np.array_equal(ids, expected):
        raise DatasetError(
            zip_path, f"holds {len(ids)} numbered images but the responses have {n_images} images "
            f"(missing {sorted(set(expected) - set(ids))[:5]}, extra {sorted(set(ids) - set(expected))[:5]})",
            session=session, field="images",
        )
    return images
