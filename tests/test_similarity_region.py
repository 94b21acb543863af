"""`encoders similarity region`: the allowable region of two similarity measures."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from encoders.cli import main
from encoders.datasets.io import write_dataset
from encoders.similarity import MEASURES
from encoders.similarity.optimize import synthetic_target
from encoders.similarity.region import allowable_region, check_targets, default_targets
from encoders.twin import make_twin

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 0.02


@pytest.fixture(scope="module")
def region() -> xr.Dataset:
    X = synthetic_target(30, 6, 1.0, 1234)
    return allowable_region(X, "cka_linear", "procrustes_angular_score", [0.3, 0.5, 0.7, 0.9],
                            tolerance=TOLERANCE, steps=150, lr=0.05, seed=0, record_steps=True)


def test_held_measure_stays_at_its_target(region) -> None:
    X = synthetic_target(30, 6, 1.0, 1234)
    met = region["met"].values
    assert met.mean() >= 0.75, region["b_score"].values  # most targets reachable on a small synthetic target
    t = region["target"].values[:, None]
    b = region["b_score"].values
    assert (np.abs(b - t)[met] <= TOLERANCE).all()
    assert (np.abs(b - t)[~met] > TOLERANCE).all()
    # the stored trace ends at the stored final value; the first step is the shared noise start
    np.testing.assert_allclose(region["b_trace"].values[..., -1], b)
    assert np.ptp(region["a_trace"].values[..., 0]) < 1e-12
    assert region["a_trace"].dims == ("target", "edge", "step") and region.sizes["step"] == 151
    assert float(MEASURES["cka_linear"](X, X)) == pytest.approx(1.0)


def test_region_has_nonzero_width(region) -> None:
    a = region["a_score"].sel(edge="max").values, region["a_score"].sel(edge="min").values
    both = region["met"].values.all(1)
    assert (a[0] >= a[1] - 1e-9).all(), a  # the upper edge is never below the lower one
    width = (a[0] - a[1])[both]
    # high CKA is compatible with a wide range of Procrustes: at Procrustes score 0.5 CKA spans > 0.3
    assert width.max() > 0.3, width
    assert (width > 0.01).sum() >= 2, width
    assert region.attrs["measure_a"] == "cka_linear" and region.attrs["measure_b"] == "procrustes_angular_score"


def test_targets_helpers() -> None:
    np.testing.assert_allclose(default_targets("cka_linear", 4), [0.125, 0.375, 0.625, 0.875])
    assert default_targets("procrustes_angular", 1)[0] == pytest.approx(np.pi / 4)
    with pytest.raises(ValueError, match=r"outside the range \[0, 1\] of 'cka_linear'"):
        check_targets("cka_linear", [0.5, 1.5])
    with pytest.raises(ValueError, match="--targets must be >= 1"):
        default_targets("cka_linear", 0)


def test_cli_writes_netcdf_and_png(tmp_path, capsys) -> None:
    out = tmp_path / "region"
    argv = ["similarity", "region", "--synthetic-target", "--stimuli", "20", "--units", "4", "--steps", "20",
            "--targets", "3", "--measure-a", "cka_linear", "--measure-b", "procrustes_angular", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["region.nc", "region.png"]
    with xr.open_dataset(out / "region.nc", engine="h5netcdf") as ds:
        assert ds.sizes == {"target": 3, "edge": 2}
        assert ds["edge"].values.tolist() == ["max", "min"]
        assert ds["met"].dtype == bool and ds["a_score"].dims == ("target", "edge")
        np.testing.assert_allclose(ds["target"].values, np.pi / 2 * np.array([1, 3, 5]) / 6)
        assert ds.attrs["higher_is_better_b"] == 0 and "synthetic 20x4" in ds.attrs["target_data"]
    assert (out / "region.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "A max" in capsys.readouterr().out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    sessions, truth = make_twin(n_sessions=1, neurons_per_session=5, images_per_session=40, image_size=16, seed=0)
    path = tmp_path_factory.mktemp("region") / "twin.h5"
    write_dataset(path, sessions, ground_truth=truth.state_arrays())
    return path


def test_cli_dataset_session(data_file, tmp_path) -> None:
    out = tmp_path / "region"
    assert main(["similarity", "region", "--data", str(data_file), "--session", "twin0", "--tier", "train",
                 "--steps", "5", "--b-values", "0.5", "--measure-b", "nbs", "--out", str(out)]) == 0
    with xr.open_dataset(out / "region.nc", engine="h5netcdf") as ds:
        assert ds["target"].values.tolist() == [0.5] and "twin0" in ds.attrs["target_data"]


BAD = [
    (["--measure-a", "cka_bogus"], "unknown similarity measure 'cka_bogus'; known: cca_mean"),
    (["--measure-b", "cka_bogus"], "unknown similarity measure 'cka_bogus'; known: cca_mean"),
    (["--measure-b", "cka_linear"], "measure A and measure B must differ, both are 'cka_linear'"),
    (["--measure-b", "cka_linear", "--measure-a", "procrustes_angular", "--b-values", "1.5"],
     "B target(s) [1.5] outside the range [0, 1] of 'cka_linear'"),
    (["--measure-b", "rsa_spearman"], "no gradient"),
    (["--targets", "0"], "--targets must be >= 1"),
    (["--tolerance", "0"], "need tolerance > 0"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_input_one_line_exit_2(tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "never"
    argv = ["similarity", "region", "--synthetic-target", "--stimuli", "20", "--units", "4", "--steps", "3",
            "--targets", "2", "--out", str(out)] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("encoders: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
