"""The synthetic V4 digital twin on disk: write it, and rebuild its true neurons from the file."""

from __future__ import annotations

from pathlib import Path

import torch

from encoders.datasets.io import read_arrays, read_ground_truth, write_dataset
from encoders.datasets.synthetic import GroundTruthV4, make_twin
from encoders.datasets.transforms import ImageTransform
from encoders.errors import DatasetError


def write_twin(
    out: str | Path, n_sessions: int, neurons_per_session: int, images_per_session: int, image_size: int,
    seed: int, validation_fraction: float, test_fraction: float, test_repeats: int,
) -> list[str]:
    """Generate the twin and write it, ground truth included, atomically to `out`."""
    sessions, truth = make_twin(
        n_sessions=n_sessions, neurons_per_session=neurons_per_session, images_per_session=images_per_session,
        image_size=image_size, seed=seed, validation_fraction=validation_fraction, test_fraction=test_fraction,
        test_repeats=test_repeats,
    )
    return write_dataset(
        out, sessions,
        attrs={
            "title": "Synthetic V4 digital twin (ground-truth model neurons)",
            "source": "encoders prepare synthetic",
            "generator": f"sessions={n_sessions} neurons={neurons_per_session} images={images_per_session} "
                         f"size={image_size} seed={seed} test_repeats={test_repeats}",
        },
        ground_truth=truth.state_arrays(),
    )


def load_ground_truth(path: str | Path) -> GroundTruthV4:
    """The twin's true neurons (all sessions), rebuilt from the file, in eval mode."""
    return GroundTruthV4.from_arrays(read_ground_truth(path)).eval()


def has_ground_truth(path: str | Path) -> bool:
    try:
        read_ground_truth(path)
    except DatasetError:
        return False
    return True


def ground_truth_columns(path: str | Path, session: str) -> torch.Tensor:
    """Columns of the ground-truth output that are this session's neurons, in the session's order."""
    return torch.as_tensor(read_arrays(path, session, ["ground_truth_index"])["ground_truth_index"], dtype=torch.long)


def true_rf_centres(
    path: str | Path, sessions: list[str], transform: ImageTransform, input_shape: tuple[int, int, int],
    feature_shape: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Each session's true receptive-field centres as (x, y) on a model's feature grid, {session: (n_neurons, 2)}.

    In grid-cell indices (cell centres at 0, 1, ...). Stored-image pixels go through the transform's
    crop and resize to model-input pixels, then onto the core's grid: a grid nearly as large as the
    input is a stride-1 core of valid convolutions (the stacked core), which trims the border
    symmetrically; a much smaller one (a strided, padded core) is taken to scale the input uniformly.
    """
    arrays = read_ground_truth(path)
    size = int(arrays["image_size"])
    top, bottom, left, right = (int(c) for c in transform.crop)
    _, height_in, width_in = input_shape
    centres = []
    for name, low, high, size_in, size_grid in (
        ("rf_x", left, right, width_in, feature_shape[1]), ("rf_y", top, bottom, height_in, feature_shape[0]),
    ):
        pixel = torch.as_tensor(arrays[name], dtype=torch.float32) - low
        pixel = (pixel + 0.5) * size_in / (size - low - high) - 0.5  # resize maps pixel edges to edges
        if size_grid * 2 > size_in:
            centres.append(pixel - (size_in - size_grid) / 2)
        else:
            centres.append((pixel + 0.5) * size_grid / size_in - 0.5)
    every_neuron = torch.stack(centres, dim=1)
    return {session: every_neuron[ground_truth_columns(path, session)] for session in sessions}
