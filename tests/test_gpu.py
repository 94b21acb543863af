"""On a CUDA device: batched MEIs equal single-neuron and CPU ones, and a GPU fit makes its products.

No CUDA device exists on CI or on the 2-core development machine, so these are reported as skipped
with the reason below; run them on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import xarray as xr

from encoders.callbacks import Products
from encoders.datasets.datamodule import RecordedDataModule
from encoders.datasets.io import write_dataset
from encoders.products import MEIs
from encoders.synthesis import GASettings, NeuronActivation, all_targets, optimize_images
from encoders.training import EncodingModel, ModelCheckpoint
from conftest import make_session
from test_gradient_ascent import NORM, SHAPE, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none; the same checks on CPU are in test_gradient_ascent.py and "
           "test_meis.py); run on a GPU machine with `pytest -m gpu`"),
]


@pytest.fixture
def full_float32(monkeypatch):
    """No TF32 in convolutions and matrix products, so GPU results are comparable with CPU ones."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def test_batched_meis_on_cuda_equal_single_runs_and_cpu(full_float32):
    targets = all_targets(tiny_model())
    seeds = list(range(len(targets)))
    settings = dict(steps=15, optimizer="sgd", lr=0.05, blur_sigma=1.0, norm=NORM, pixel_range=(-2.0, 2.2))
    cpu = optimize_images(NeuronActivation(tiny_model(), targets), len(targets), SHAPE, seeds, **settings)
    model = tiny_model().cuda()
    gpu = optimize_images(NeuronActivation(model, targets), len(targets), SHAPE, seeds, device="cuda", **settings)
    assert gpu.images.device.type == "cpu"  # results come back to the host
    torch.testing.assert_close(gpu.energy, cpu.energy, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gpu.images, cpu.images, atol=1e-3, rtol=0)
    for b in (0, len(targets) - 1):
        single = optimize_images(NeuronActivation(model, [targets[b]]), 1, SHAPE, [seeds[b]], device="cuda", **settings)
        torch.testing.assert_close(single.images[0], gpu.images[b], atol=1e-4, rtol=0)


def test_gpu_fit_makes_mei_products(tmp_path):
    data = tmp_path / "tiny.h5"
    write_dataset(data, [make_session("s0", n_images=40, n_neurons=5)])
    pl.seed_everything(0)
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, monitor="val/correlation", mode="max"),
                   Products([MEIs(top_k=2, method=GASettings(seeds=(0, 1), steps=4))])],
    )
    model = EncodingModel(core={"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3},
                          readout={"type": "attention", "embed_dim": 4, "heads": 1, "dropout": 0.0})
    trainer.fit(model, RecordedDataModule(str(data), batch_size=16))
    with xr.open_dataset(tmp_path / "products" / "last" / "mei_ga.nc") as meis:
        assert meis.image.shape == (1, 2, 2, 1, 16, 16) and (meis.activation > 0).all()
