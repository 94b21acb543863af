"""`encoders similarity captured`: explained variance of each target PC against the score, per measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from encoders.cli import main
from encoders.datasets.io import write_dataset
from encoders.similarity.captured import capture_curves, explained_per_pc, parse_threshold, threshold_levels
from encoders.twin import make_twin

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANCES = (100.0, 10.0, 1.0, 0.1)  # a decade apart: with 10 vs 5, PC1 and PC2 are captured within a step


def known_target(n: int = 60, noise: float = 1e-4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """X = orthogonal components with variances 100, 10, 1, 0.1 (+ tiny noise), and its unit PC scores (n, 4)."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    Z = Z - Z.mean(0)
    U = torch.linalg.qr(Z).Q  # centred orthonormal score directions
    R = torch.linalg.qr(torch.randn(6, 4, generator=g, dtype=torch.float64)).Q  # orthonormal loadings in 6 neurons
    std = torch.tensor(VARIANCES, dtype=torch.float64).sqrt() * (n - 1) ** 0.5
    X = (U * std) @ R.mT + noise * torch.randn(n, 6, generator=g, dtype=torch.float64)
    return X, U


def test_explained_matches_hand_derivation() -> None:
    X, U = known_target()
    # Y = X's first two PCs only: PCs 1-2 explained fully, 3-4 not at all
    top2 = explained_per_pc(X, U[:, :2] * 3.0 + 7.0, 4)  # scale and offset do not matter (regression, intercept)
    np.testing.assert_allclose(top2, [1, 1, 0, 0], atol=1e-6)
    # one direction mixing PC1 and PC3 equally: each is explained cos^2(45 deg) = 1/2
    mixed = explained_per_pc(X, (U[:, 0] + U[:, 2])[:, None], 4)
    np.testing.assert_allclose(mixed, [0.5, 0, 0.5, 0], atol=1e-4)  # the noise tilts the PCs slightly
    # the target explains itself; a constant explains nothing; past the rank: NaN
    np.testing.assert_allclose(explained_per_pc(X, X, 4), 1, atol=1e-9)
    np.testing.assert_allclose(explained_per_pc(X, torch.ones(60, 2, dtype=torch.float64), 4), 0, atol=1e-12)
    assert np.isnan(explained_per_pc(X[:, :2], X[:, :2], 3)[2])


def test_capture_order_follows_the_spectrum() -> None:
    X, _ = known_target()
    ds = capture_curves(X, ["procrustes_angular_score", "cka_linear"], components=4, steps=200, lr=0.05, seed=0)
    assert ds["explained"].dims == ("measure", "step", "component") and ds.sizes["step"] == 201
    np.testing.assert_allclose(ds["target_variance_ratio"].values, np.array(VARIANCES) / sum(VARIANCES), rtol=1e-4)
    procrustes = ds.sel(measure="procrustes_angular_score")
    steps, at = procrustes["step_at_capture"].values, procrustes["score_at_capture"].values
    assert np.isfinite(steps).all(), steps
    assert (np.diff(steps) > 0).all() and (np.diff(at) > 0).all(), (steps, at)  # PC1, PC2, PC3, PC4 in turn
    # CKA reaches its top score on PC1 and PC2 alone: PCs 3 and 4 (1.1% of the variance) are never captured
    cka = ds.sel(measure="cka_linear")
    assert cka["step_at_capture"].values[0] < cka["step_at_capture"].values[1], cka["step_at_capture"].values
    assert np.isnan(cka["score_at_capture"].values[2:]).all() and float(cka["score"][-1]) > 0.98
    # "half": the level is half-way between the step-0 value and 1
    np.testing.assert_allclose(ds["threshold"].values[0], (ds["explained"].values[0, 0] + 1) / 2)


def test_threshold_parsing() -> None:
    assert parse_threshold("half") == "half" and parse_threshold("0.8") == 0.8
    np.testing.assert_allclose(threshold_levels("half", np.array([0.2, 0.4])), [0.6, 0.7])
    for bad in ("0", "1.5", "most"):
        with pytest.raises(ValueError, match="threshold"):
            parse_threshold(bad)


def test_cli_writes_netcdf_and_png(tmp_path, capsys) -> None:
    out = tmp_path / "cap"
    argv = ["similarity", "captured", "--synthetic-target", "--stimuli", "30", "--units", "6", "--steps", "20",
            "--components", "3", "--measures", "cka_linear", "procrustes_angular", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["captured.nc", "captured.png"]
    with xr.open_dataset(out / "captured.nc", engine="h5netcdf") as ds:
        assert ds.sizes == {"measure": 2, "step": 21, "component": 3}
        assert ds["higher_is_better"].values.tolist() == [True, False]
        assert ds["explained"].attrs["units"] == "1" and "R^2" in ds["explained"].attrs["long_name"]
        assert ds["score_at_capture"].dims == ("measure", "component")
    assert (out / "captured.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PC1" in capsys.readouterr().out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    sessions, truth = make_twin(n_sessions=1, neurons_per_session=5, images_per_session=40, image_size=16, seed=0)
    path = tmp_path_factory.mktemp("captured") / "twin.h5"
    write_dataset(path, sessions, ground_truth=truth.state_arrays())
    return path


def test_cli_dataset_session(data_file, tmp_path) -> None:
    out = tmp_path / "cap"
    assert main(["similarity", "captured", "--data", str(data_file), "--session", "twin0", "--tier", "train",
                 "--steps", "5", "--components", "2", "--measures", "nbs", "--out", str(out)]) == 0
    with xr.open_dataset(out / "captured.nc", engine="h5netcdf") as ds:
        assert ds.sizes["component"] == 2 and "twin0" in ds.attrs["target"]


BAD = [
    (["--measures", "cka_bogus"], "unknown similarity measure 'cka_bogus'; known: cca_mean"),
    (["--measures", "rsa_spearman"], "no gradient"),
    (["--components", "0"], "--components must be >= 1"),
    (["--threshold", "2"], "threshold must be 'half' or a number"),
    (["--components", "9"], "exceeds the target's"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_input_one_line_exit_2(tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "never"
    argv = ["similarity", "captured", "--synthetic-target", "--stimuli", "20", "--units", "4", "--steps", "3",
            "--components", "2", "--out", str(out)] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("encoders: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_cross_validated_explained_variance_has_no_chance_floor():
    """In-sample, p unrelated features explain about p / n of a PC; out of fold they explain nothing (R^2 <= ~0),
    while a representation that holds a PC explains it out of fold too."""
    from encoders.similarity.captured import cross_validated_explained_per_pc, explained_per_pc

    g = torch.Generator().manual_seed(0)
    n = 120
    basis = torch.linalg.qr(torch.randn(n, 3, generator=g, dtype=torch.float64))[0]
    target = basis * torch.tensor([10.0, 5.0, 1.0], dtype=torch.float64) @ torch.randn(3, 12, generator=g, dtype=torch.float64)
    unrelated = torch.randn(n, 40, generator=g, dtype=torch.float64)
    in_sample = explained_per_pc(target, unrelated, 3)
    out_of_fold = cross_validated_explained_per_pc(target, unrelated, 3, seed=0)
    assert (in_sample > 0.2).all() and (out_of_fold < 0.05).all()  # the chance floor is about 40 / 120 in-sample
    holds_two = torch.cat([target @ torch.linalg.svd(target - target.mean(0), full_matrices=False)[2][:2].T,
                           torch.randn(n, 3, generator=g, dtype=torch.float64)], 1)
    explained = cross_validated_explained_per_pc(target, holds_two, 3, seed=0)
    assert explained[0] > 0.99 and explained[1] > 0.99 and explained[2] < 0.1
