"""Distributed data parallel: a real 2-process gloo fit of train.py on CPU trains like one process,
with validation metrics computed over both ranks' data, and the post-training products made once.

Each rank takes every second batch of an epoch (the batch sampler shards itself; Lightning does not
wrap our loader) and both ranks run the same number of steps, so no collective waits forever.
Per-neuron correlations are computed on predictions gathered from all ranks, not averaged over
ranks, so the logged metric equals a single-process evaluation of the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import xarray as xr

import fit_runs
from encoders.datasets.datamodule import RecordedDataModule, SessionBatchSampler
from encoders.training import EncodingModel

pytestmark = pytest.mark.filterwarnings("ignore")

DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
PRODUCTS = [
    {"class_path": "encoders.callbacks.MetricsTable"},
    {"class_path": "encoders.callbacks.Products", "init_args": {"products": [
        {"class_path": "encoders.products.MEIs", "init_args": {"top_k": 2, "method": {"steps": 5}, "ground_truth": False}},
    ]}},
]


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """The tiny fit on 2 processes (16 images a batch on each) and on 1 (32 a batch: the same
    images per optimizer step and about as many steps per epoch)."""
    folder = tmp_path_factory.mktemp("ddp")
    data = fit_runs.write_tiny_twin(folder / "twin.h5")
    env = fit_runs.environment()
    out = {"data": data}
    for name, batch, extra in [("two", 16, DDP), ("one", 32, [])]:
        config = fit_runs.tiny_config(folder / name, data, callbacks=PRODUCTS, test_after_fit=True)
        config["data"]["batch_size"] = batch
        path = fit_runs.write_config(folder / f"{name}.yaml", config)
        result = fit_runs.train(["fit", "--config", str(path), *extra], env, timeout=240)
        assert result.returncode == 0, result.stderr[-4000:]
        out[name] = folder / name
        out[f"{name}_log"] = result.stderr
    return out


def test_two_processes_train_like_one(fits):
    two = fit_runs.read_checkpoint_state(fits["two"] / "checkpoints" / "last.ckpt")
    one = fit_runs.read_checkpoint_state(fits["one"] / "checkpoints" / "last.ckpt")
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in fits["two_log"]
    # 10 training batches an epoch -> 5 steps per rank, 4 epochs
    assert two["global_step"] == 4 * 5 and one["global_step"] == 4 * 6
    # Measured: 0.230 on two processes, 0.210 on one; one-process runs with seeds 0-3 spread
    # from 0.11 to 0.35 on this tiny twin, so 0.1 is well within noise.
    assert two["best_model_score"] > 0.15
    assert abs(two["best_model_score"] - one["best_model_score"]) < 0.1, (two["best_model_score"], one["best_model_score"])


def test_metrics_are_computed_over_all_ranks(fits):
    """The DDP-logged val/correlation of the best checkpoint = one process validating those weights."""
    state = fit_runs.read_checkpoint_state(fits["two"] / "checkpoints" / "last.ckpt")
    model = EncodingModel.load_from_checkpoint(fits["two"] / "checkpoints" / state["best_model_path"], map_location="cpu",
                                               weights_only=True)
    datamodule = RecordedDataModule(str(fits["data"]), batch_size=16)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    single = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/correlation"]
    assert single == pytest.approx(state["best_model_score"], abs=1e-6)

    # the test table after fit (rank 0) holds every neuron once, with the single-process values
    trainer.test(model, datamodule=datamodule, verbose=False)
    with xr.open_dataset(fits["two"] / "test_metrics.nc", engine="h5netcdf") as table:
        assert table.sizes["neuron"] == 10
        np.testing.assert_allclose(table.correlation.values, model.test_results.correlation.values, atol=1e-6)


def test_products_are_made_once_on_rank_zero(fits):
    products = sorted(p.relative_to(fits["two"]).as_posix() for p in (fits["two"] / "products").rglob("*") if p.is_file())
    best = fit_runs.read_checkpoint_state(fits["two"] / "checkpoints" / "last.ckpt")["best_model_path"][: -len(".ckpt")]
    assert products == sorted(f"products/{c}/mei_ga.{ext}" for c in (best, "last") for ext in ("nc", "png"))
    with xr.open_dataset(fits["two"] / "products" / "last" / "mei_ga.nc", engine="h5netcdf") as mei:
        assert mei.sizes["neuron"] == 2


@pytest.mark.parametrize("batches", [9, 10, 1])
def test_every_rank_gets_as_many_batches(batches):
    """Training drops the leftover batch, evaluation pads with a repeat: equal counts on every rank,
    and evaluation still covers every image."""
    groups = [np.arange(0, 4 * batches - 2), np.arange(4 * batches - 2, 4 * batches + 3)]
    for balance in ("drop", "pad"):
        ranks = [list(SessionBatchSampler(groups, 4, balance == "drop", seed=1, rank=r, world_size=2, balance=balance))
                 for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == len(SessionBatchSampler(groups, 4, False, world_size=2, balance=balance))
        seen = {i for batches_ in ranks for batch in batches_ for i in batch}
        if balance == "pad":
            assert seen == set(range(4 * batches + 3))
        else:
            flat = [i for batches_ in ranks for batch in batches_ for i in batch]
            assert len(flat) == len(set(flat)), "ranks must not share training images"
