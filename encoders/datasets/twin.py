"""The synthetic V4 digital twin on disk: write it, and rebuild its true neurons from the file."""

from __future__ import annotations

from pathlib import Path

import torch

from encoders.datasets.io import read_arrays, read_ground_truth, write_dataset
from encoders.datasets.synthetic import GroundTruthV4, make_twin
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
