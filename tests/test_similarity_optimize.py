"""Tests of encoders.similarity.optimize: score optimisation (Cloos et al. 2024) and its CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import xarray as xr

from encoders.similarity.optimize import (
    add_arguments,
    optimize_score,
    plot_optimization,
    run,
    synthetic_target,
)

STEPS, LR = 100, 0.05


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: thread start-up dominates on 2 shared cores


@pytest.fixture(scope="module")
def target() -> torch.Tensor:
    return synthetic_target(stimuli=100, units=20, spectrum_decay=1.0, seed=1234)


@pytest.fixture(scope="module")
def runs(target) -> dict[str, xr.Dataset]:
    return {m: optimize_score(target, m, STEPS, LR, seed=0)
            for m in ("cka_linear", "procrustes_angular_score")}


def first_step_above(captured: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Per component, the first step whose captured variance exceeds threshold (inf if never)."""
    above = captured > threshold
    return np.where(above.any(0), above.argmax(0), np.inf)


def test_synthetic_target_has_exact_power_law_spectrum() -> None:
    Y = synthetic_target(stimuli=60, units=12, spectrum_decay=1.5, seed=3)
    assert Y.shape == (60, 12) and Y.dtype == torch.float64
    torch.testing.assert_close(Y.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-12, rtol=0)
    lam = torch.linalg.eigvalsh(torch.cov(Y.T)).flip(0)
    expected = torch.arange(1, 13, dtype=torch.float64).pow(-1.5)
    torch.testing.assert_close(lam / lam.sum(), expected / expected.sum(), atol=1e-12, rtol=0)
    assert lam.sum().item() == pytest.approx(12.0)


def test_dataset_layout(runs, target) -> None:
    ds = runs["cka_linear"]
    assert ds["score"].dims == ("step",)
    assert ds["captured"].dims == ("step", "component")
    assert ds.sizes == {"step": STEPS + 1, "component": target.shape[1]}
    assert ds.attrs["measure"] == "cka_linear"
    assert ds.attrs["lr"] == LR and ds.attrs["seed"] == 0
    assert ds["target_variance_ratio"].sum().item() == pytest.approx(1.0)
    assert np.all(np.diff(ds["target_variance_ratio"].values) <= 0)
    assert ((ds["captured"] >= -1e-12) & (ds["captured"] <= 1 + 1e-12)).all()


@pytest.mark.parametrize("measure", ["cka_linear", "procrustes_angular_score"])
def test_score_increases(runs, measure: str) -> None:
    score = runs[measure]["score"].values
    assert score[-1] > score[0] + 0.5
    assert score[-1] > 0.95
    # Adam with a moderate step mostly climbs
    assert np.mean(np.diff(score) > 0) > 0.9


def test_cka_captures_top_pc_before_low_variance_pcs(runs) -> None:
    first = first_step_above(runs["cka_linear"]["captured"].values)
    assert runs["cka_linear"]["captured"].sel(component=1).values[-1] > 0.9
    assert np.isfinite(first[0])
    # every PC of the lower half is reached later than PC 1, if at all
    assert np.all(first[10:] > first[0])
    assert np.isinf(first[-1])


def test_procrustes_captures_low_variance_pcs_earlier_than_cka(runs) -> None:
    cka = runs["cka_linear"]["captured"]
    pro = runs["procrustes_angular_score"]["captured"]
    low = slice(11, 20)  # components 11..20, the lower-variance half
    first_cka = first_step_above(cka.values)[10:]
    first_pro = first_step_above(pro.values)[10:]
    assert np.all(first_pro < first_cka)
    assert np.all(np.isfinite(first_pro))
    halfway = STEPS // 2
    gap = pro.sel(step=halfway, component=low).mean() - cka.sel(step=halfway, component=low).mean()
    assert gap.item() > 0.2


def test_distance_is_minimised(target) -> None:
    ds = optimize_score(target[:40, :6], "procrustes_euclidean", 30, LR, seed=1)
    assert ds.attrs["higher_is_better"] == 0
    assert ds["score"].values[-1] < ds["score"].values[0] - 0.2


def test_invalid_arguments(target) -> None:
    with pytest.raises(ValueError, match="unknown similarity measure"):
        optimize_score(target, "cka", 5, LR, 0)
    with pytest.raises(ValueError, match="no gradient"):
        optimize_score(target, "rsa_spearman", 5, LR, 0)
    with pytest.raises(ValueError, match="lr"):
        optimize_score(target, "nbs", 5, -1.0, 0)
    with pytest.raises(ValueError, match="2-D"):
        optimize_score(target[:, 0], "nbs", 5, LR, 0)
    with pytest.raises(ValueError, match="spectrum_decay"):
        synthetic_target(10, 3, -1.0, 0)


def test_deterministic_given_seed(target) -> None:
    a = optimize_score(target[:30, :5], "nbs", 5, LR, seed=3)
    b = optimize_score(target[:30, :5], "nbs", 5, LR, seed=3)
    c = optimize_score(target[:30, :5], "nbs", 5, LR, seed=4)
    xr.testing.assert_identical(a, b)
    assert not np.allclose(a["score"], c["score"])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="encoders similarity optimize")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_synthetic_target_writes_files(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = parse(["--measure", "cka_linear", "--steps", "20", "--lr", "0.05", "--seed", "0",
                  "--out", str(out), "--synthetic-target", "--stimuli", "40", "--units", "8",
                  "--spectrum-decay", "1.0"])
    assert run(args) == 0
    with xr.open_dataset(out / "optimization.nc") as ds:
        assert ds.sizes == {"step": 21, "component": 8}
        assert ds.attrs["measure"] == "cka_linear"
    assert (out / "optimization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["optimization.nc", "optimization.png"]
    printed = capsys.readouterr().out
    assert "score" in printed and "PC1" in printed


def test_cli_netcdf_target(tmp_path, capsys) -> None:
    Y = synthetic_target(30, 6, 1.0, seed=5).numpy()
    path = tmp_path / "target.nc"
    xr.Dataset({"responses": (("stimulus", "unit"), Y), "other": ("unit", np.ones(6))}).to_netcdf(
        path, engine="h5netcdf"
    )
    out = tmp_path / "out"
    args = parse(["--measure", "nbs", "--steps", "5", "--out", str(out), "--target", str(path),
                  "--variable", "responses"])
    assert run(args) == 0
    with xr.open_dataset(out / "optimization.nc") as ds:
        assert ds.sizes["step"] == 6
    # ambiguous file without --variable, and a 1-D variable, are user errors (one line, exit 2 in the CLI)
    from encoders.errors import EncodersError

    with pytest.raises(EncodersError, match="choose one with --variable"):
        run(parse(["--out", str(out), "--target", str(path)]))
    with pytest.raises(EncodersError, match="other"):
        run(parse(["--out", str(out), "--target", str(path), "--variable", "other"]))


def test_cli_requires_a_target(tmp_path) -> None:
    with pytest.raises(SystemExit):
        parse(["--out", str(tmp_path)])


def test_plot_optimization(runs, tmp_path) -> None:
    path = tmp_path / "plot.png"
    plot_optimization(runs["procrustes_angular_score"], path)
    assert path.stat().st_size > 1000
