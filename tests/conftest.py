"""Shared fixtures: small generated datasets and the real Cowley et al. V4 data (../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from encoders.datasets.schema import SessionData  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COWLEY_SOURCE = Path(os.environ.get("COWLEY_SOURCE", ROOT.parent / "shared" / "datasets" / "cowley2023_v4"))


def make_session(
    session_id: str = "s0", n_images: int = 60, n_neurons: int = 7, size: int = 16, channels: int | None = None,
    trials: bool = True, seed: int = 0,
) -> SessionData:
    """A small valid session of Poisson responses to random images."""
    rng = np.random.default_rng(seed)
    shape = (n_images, size, size) if channels is None else (n_images, channels, size, size)
    tiers = np.array(["train"] * n_images, dtype=object)
    tiers[: n_images // 5] = "test"
    tiers[n_images // 5 : 2 * n_images // 5] = "validation"
    repeats = rng.poisson(3.0, (n_images, 4, n_neurons)).astype(np.float32)
    repeats[:, 3, :] = np.nan  # every image has one missing repeat
    return SessionData(
        session_id=session_id,
        images=rng.integers(0, 256, shape, dtype=np.uint8),
        image_ids=np.arange(100, 100 + n_images, dtype=np.int64),
        responses=np.nanmean(repeats, axis=1).astype(np.float32),
        tiers=tiers.astype(str),
        neuron_ids=np.array([f"{session_id}-n{i}" for i in range(n_neurons)]),
        trials=repeats if trials else None,
        neuron_meta={"depth_um": np.linspace(100, 700, n_neurons)},
        attrs={"animal": "test", "units": "spikes per bin", "spike_counts": 1},
    )


@pytest.fixture
def session_factory():
    return make_session


@pytest.fixture(scope="session")
def cowley_source() -> Path:
    if not COWLEY_SOURCE.is_dir():
        pytest.fail(f"the Cowley et al. 2023 V4 data are expected at {COWLEY_SOURCE} (set COWLEY_SOURCE)")
    return COWLEY_SOURCE


@pytest.fixture(scope="session")
def cowley_h5(tmp_path_factory, cowley_source) -> Path:
    """All 9 sessions converted once per test run (about 5 s)."""
    from encoders.datasets.cowley2023 import convert_cowley2023

    out = tmp_path_factory.mktemp("cowley") / "cowley2023_v4.h5"
    convert_cowley2023(cowley_source, out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module: small problems are dominated by thread start-up on 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
