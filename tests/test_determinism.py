"""Determinism on CPU: the same seed and config give bit-identical weights and metrics twice;
another seed gives another model (so the comparison is not vacuous)."""

from __future__ import annotations

import json

import pytest
import torch
import xarray as xr

import fit_runs

pytestmark = pytest.mark.filterwarnings("ignore")


def _fit(folder, data, name: str, seed: int) -> dict:
    history = folder / f"{name}.jsonl"
    callbacks = [{"class_path": "encoders.callbacks.MetricsTable"}, fit_runs.record_callback(history)]
    config = fit_runs.tiny_config(folder / name, data, max_epochs=3, callbacks=callbacks, test_after_fit=True)
    config["seed_everything"] = seed
    assert fit_runs.train_in_process(["fit", "--config", str(fit_runs.write_config(folder / f"{name}.yaml", config))]) == 0
    with xr.open_dataset(folder / name / "test_metrics.nc", engine="h5netcdf") as table:
        tests = table.load()
    return {
        "state": fit_runs.read_checkpoint_state(folder / name / "checkpoints" / "last.ckpt"),
        "val": [json.loads(line) for line in history.read_text().splitlines()],
        "test": tests,
    }


def test_same_seed_same_everything_other_seed_other_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(fit_runs.write_helpers(tmp_path)))
    data = fit_runs.write_tiny_twin(tmp_path / "twin.h5")
    first, second = _fit(tmp_path, data, "first", 0), _fit(tmp_path, data, "second", 0)
    fit_runs.assert_same_run(first["state"], second["state"])
    # every epoch's validation metrics (mean, per session, Poisson loss), exactly
    assert len(first["val"]) == 3 and len(first["val"][0]) == 4
    assert first["val"] == second["val"]
    xr.testing.assert_identical(first["test"].drop_attrs(), second["test"].drop_attrs())

    other = _fit(tmp_path, data, "other", 1)
    assert other["val"][-1]["val/correlation"] != first["val"][-1]["val/correlation"]
    weight = "encoder.core.layers.0.0.weight"
    assert not torch.equal(other["state"]["state_dict"][weight], first["state"]["state_dict"][weight])
