"""EGG MEIs, MENIs and reconstructions as products of each kept checkpoint, next to GA, scored on a tiny twin's true neurons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import xarray as xr

from encoders.callbacks import Products
from encoders.datasets.datamodule import RecordedDataModule
from encoders.datasets.io import write_dataset
from encoders.errors import EncodersError
from encoders.products import MEIs, Reconstructions
from encoders.synthesis import EGGSettings
from encoders.training import EncodingModel, ModelCheckpoint
from encoders.twin import make_twin

pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: thread start-up dominates on 2 shared cores
PRIOR = str(Path(__file__).resolve().parents[1] / "data" / "priors" / "natural32")
CORE = {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3}
READOUT = {"type": "gaussian", "gauss_type": "isotropic"}


def egg(energy_scale: float, contrast: float | None = 0.25) -> EGGSettings:
    return EGGSettings(prior=PRIOR, seeds=(0, 1), num_steps=4, energy_scale=energy_scale, contrast=contrast)


def test_egg_products_for_best_and_last(tmp_path):
    sessions, truth = make_twin(n_sessions=1, neurons_per_session=4, images_per_session=120, image_size=24, seed=0)
    data = tmp_path / "twin.h5"
    write_dataset(data, sessions, ground_truth=truth.state_arrays())
    pl.seed_everything(0)
    # MEIs guided at the GA contrast (a step of L2 length 2 on the 1x32x32 prior); MENIs and
    # reconstructions at the prior's own contrast, MENIs with a weaker step (L2 0.5)
    products = Products([
        MEIs(top_k=2, method=egg(0.0625)),
        MEIs(top_k=2, kind="meni", method=egg(0.015625, contrast=None)),
        Reconstructions(images=2, target="predicted", method=egg(0.0625, contrast=None)),
    ])
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="val/correlation", mode="max"), products],
    )
    trainer.fit(EncodingModel(core=CORE, readout=READOUT), RecordedDataModule(str(data), batch_size=32))
    folders = sorted((tmp_path / "products").iterdir())
    assert [f.name for f in folders][-1] == "last" and len(folders) == 2
    for folder in folders:
        for product in ("mei", "meni"):
            with xr.open_dataset(folder / f"{product}_egg.nc") as ds:
                assert ds.method.values.tolist() == ["egg"]
                assert ds.image.shape == (1, 2, 2, 1, 24, 24) and ds.sizes["step"] == 4
                assert np.isfinite(ds.activation).all() and (ds.activation > 0).all()
                assert np.isfinite(ds.ground_truth_activation).all() and "true_mei" in ds
                activation = ds.activation.transpose("method", "neuron", "seed").values
                np.testing.assert_array_equal(ds.best_seed.values, ds.seed.values[activation.argmax(-1)])
            assert (folder / f"{product}_egg.png").stat().st_size > 1000
        with xr.open_dataset(folder / "reconstruction_egg.nc") as recon:
            assert recon.method.values.tolist() == ["egg"] and recon.reconstruction.shape == (1, 2, 2, 1, 24, 24)
            assert recon.attrs["target"] == "predicted" and np.isfinite(recon.correlation).all()
        with xr.open_dataset(folder / "mei_egg.nc") as mei:
            norms = np.sqrt((mei.image.values ** 2).sum(axis=(-3, -2, -1)))
            np.testing.assert_allclose(norms, 0.25 * 24, rtol=1e-4)  # the GA norm rule: fair comparison
            assert mei.attrs["egg_guide_norm"] == mei.attrs["egg_norm"] and mei.attrs["egg_energy_scale_per_pixel"] == 0.0625
        with xr.open_dataset(folder / "meni_egg.nc") as meni:
            assert meni.attrs["product"] == "most exciting naturalistic images" and np.isnan(meni.attrs["egg_norm"])
            assert np.isnan(meni.attrs["egg_guide_norm"]) and meni.attrs["egg_energy_scale_per_pixel"] == 0.015625
    before = (folders[-1] / "mei_egg.nc").stat().st_mtime_ns
    products.on_fit_end(trainer, trainer.lightning_module)  # a re-run skips finished products
    assert (folders[-1] / "mei_egg.nc").stat().st_mtime_ns == before


def test_missing_prior_is_a_clear_error_before_training(tmp_path, session_factory):
    data = tmp_path / "tiny.h5"
    write_dataset(data, [session_factory("s0", n_images=40, n_neurons=3)])
    missing = EGGSettings(prior=str(tmp_path / "nope"))
    for product in (MEIs(top_k=1, method=missing), Reconstructions(images=1, method=missing)):
        trainer = pl.Trainer(
            max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), Products([product])],
        )
        with pytest.raises(EncodersError, match="nope: diffusion prior folder not found"):
            trainer.fit(EncodingModel(core=CORE, readout=READOUT), RecordedDataModule(str(data), batch_size=16))
        assert trainer.global_step == 0 and not (tmp_path / "ckpt").exists()
