"""Similarity diagnostics, and the SimilarityDiagnostics product after a real (tiny) Lightning fit on a synthetic twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import xarray as xr

from encoders.callbacks import Products
from encoders.datasets.datamodule import RecordedDataModule
from encoders.datasets.io import write_dataset
from encoders.encoder import Encoder
from encoders.errors import EncodersError
from encoders.products import SimilarityDiagnostics
from encoders.products.store import recorded_checkpoints
from encoders.similarity import cka_linear, nbs
from encoders.similarity.diagnostics import BASELINES, reduce_features, split_half
from encoders.training import EncodingModel, ModelCheckpoint
from encoders.twin import make_twin

CORE = {"type": "stacked", "hidden_channels": 8, "layers": 2, "input_kernel": 5, "hidden_kernel": 3, "gamma_input": 0.1}
READOUT = {"type": "gaussian", "gauss_type": "isotropic", "gamma_features": 0.001}
MEASURES = ["cka_linear", "nbs", "ridge_r2", "rsa_spearman", "procrustes_angular"]


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: thread start-up dominates on 2 shared cores


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 3-epoch fit with the similarity product attached: (root, trainer, checkpoint callback, products callback)."""
    sessions, truth = make_twin(n_sessions=1, neurons_per_session=8, images_per_session=240, image_size=24, seed=0,
                                test_repeats=10)
    root = tmp_path_factory.mktemp("similarity")
    path = root / "twin.h5"
    write_dataset(path, sessions, ground_truth=truth.state_arrays())
    pl.seed_everything(0, workers=True)
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", filename="best-{epoch:02d}", monitor="val/correlation",
                                 mode="max", save_last=True)
    similarity = Products([SimilarityDiagnostics(measures=MEASURES, layers=True, seed=0, max_features=64)])
    trainer = pl.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        callbacks=[checkpoint, similarity], default_root_dir=root, deterministic=True,
    )
    trainer.fit(EncodingModel(core=CORE, readout=READOUT, lr=0.01), datamodule=RecordedDataModule(str(path), batch_size=32))
    return root, trainer, checkpoint, similarity


def _products(root, checkpoint):
    from pathlib import Path

    stems = {Path(checkpoint.best_model_path).stem, Path(checkpoint.last_model_path).stem}
    return {stem: root / "products" / stem / "similarity.nc" for stem in stems}


def test_product_writes_labelled_scores_for_best_and_last(fitted):
    root, _, checkpoint, _ = fitted
    products = _products(root, checkpoint)
    assert "last" in products and len(products) == 2, products  # best-epoch=.. and last
    for stem, path in products.items():
        assert path.is_file() and path.with_suffix(".png").is_file(), stem
        with xr.open_dataset(path, engine="h5netcdf") as data:
            score = data["score"]
            assert score.dims == ("measure", "layer", "baseline", "session")
            assert list(data.measure.values) == MEASURES
            assert list(data.layer.values) == ["output", "layer0", "layer1"]
            assert list(data.baseline.values) == list(BASELINES)
            assert list(data.session.values) == ["twin0"]
            assert data.higher_is_better.values.tolist() == [True, True, True, True, False]
            assert (data.n_features.values[1:] <= 64).all() and data.n_features.values[0] == 8
            assert recorded_checkpoints(data) == [str(root / "ckpt" / f"{stem}.ckpt")]
            assert "pooling" in data.attrs["feature_reduction"]
            output = score.sel(layer="output", session="twin0")
            for measure in ("cka_linear", "nbs", "ridge_r2"):
                trained = float(output.sel(measure=measure, baseline="model"))
                shuffled = float(output.sel(measure=measure, baseline="shuffled"))
                assert trained > shuffled + 0.05, (stem, measure, trained, shuffled)
            # the ceiling only depends on the data: finite, the same in every layer
            ceiling = score.sel(baseline="ceiling", session="twin0")
            assert np.isfinite(ceiling.values).all()
            assert (ceiling == ceiling.sel(layer="output")).all()
            assert float(ceiling.sel(measure="cka_linear", layer="output")) > float(
                output.sel(measure="cka_linear", baseline="model"))
            assert np.isfinite(score.values[:, :, :3]).all(), data.attrs["notes"]
            # per principal component of the responses (default k = 10, threshold 0.5); 8 neurons: PCs 9-10 NaN
            explained = data["pc_explained"]
            assert explained.dims == ("layer", "baseline", "component", "session")
            assert explained.attrs["units"] == "1" and "long_name" in data["pcs_captured"].attrs
            assert list(data.component.values) == list(range(1, 11))
            finite = explained.sel(component=slice(1, 8)).values
            assert np.isfinite(finite).all() and (finite <= 1 + 1e-9).all()  # cross-validated: may be < 0
            assert np.isnan(explained.sel(component=[9, 10]).values).all()
            ratio = data["pc_variance_ratio"].sel(session="twin0").values
            assert (np.diff(ratio[:8]) <= 1e-12).all() and abs(np.nansum(ratio) - 1) < 1e-9
            count = ((explained >= 0.5).sum("component") == data["pcs_captured"])
            assert count.all()
            model_out = explained.sel(layer="output", baseline="model", session="twin0")
            assert float(model_out.sel(component=1)) > float(
                explained.sel(layer="output", baseline="shuffled", session="twin0", component=1))


def test_rerun_keeps_existing_products(fitted):
    root, trainer, checkpoint, similarity = fitted
    products = _products(root, checkpoint)
    before = {stem: path.stat().st_mtime_ns for stem, path in products.items()}
    similarity.on_fit_end(trainer, trainer.lightning_module)
    assert {stem: path.stat().st_mtime_ns for stem, path in products.items()} == before
    # a product made from another checkpoint file of the same name is stale and remade
    path = products["last"]
    with xr.open_dataset(path, engine="h5netcdf") as stored:
        stale = stored.load()
    stale.attrs["fingerprint"] = "0" * 64
    stale.to_netcdf(path, engine="h5netcdf")
    stale_time = path.stat().st_mtime_ns
    similarity.on_fit_end(trainer, trainer.lightning_module)
    assert path.stat().st_mtime_ns != stale_time
    with xr.open_dataset(path, engine="h5netcdf") as remade:
        assert remade.attrs["fingerprint"] != "0" * 64


def test_split_half_ceiling_tracks_the_noise():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(80, 1, 12))
    quiet = torch.as_tensor(signal + 0.05 * rng.normal(size=(80, 10, 12)))
    a, b, kept = split_half(quiet, seed=0)
    assert kept.all() and a.shape == (80, 12)
    assert float(cka_linear(a, b)) > 0.99 and float(nbs(a, b)) > 0.99
    noise = torch.as_tensor(rng.normal(size=(80, 10, 12)))
    a, b, _ = split_half(noise, seed=0)
    # pure noise: only the finite-sample bias of CKA (about units / stimuli) remains
    assert float(cka_linear(a, b)) < 0.25


def test_split_half_uses_disjoint_valid_repeats():
    trials = torch.full((4, 5, 2), math.nan)
    trials[0, :4] = torch.arange(4.0)[:, None]  # 4 valid repeats: halves of 2 disjoint repeats
    trials[1, :3] = torch.tensor([1.0, 2.0, 4.0])[:, None]  # 3 valid: one repeat left out
    trials[2, :1] = 7.0  # a single repeat: no split possible
    trials[3, 1:] = torch.tensor([0.0, 1.0, 2.0, 3.0])[:, None]  # missing first repeat
    a, b, kept = split_half(trials, seed=3)
    assert kept.tolist() == [True, True, False, True]
    assert torch.allclose(a[0] + b[0], torch.full((2,), 3.0, dtype=torch.float64))  # (x + y)/2 + (z + w)/2 with x+y+z+w = 6
    assert {float(a[1, 0]), float(b[1, 0])} < {1.0, 2.0, 4.0} and a[1, 0] != b[1, 0]
    again = split_half(trials, seed=3)
    assert torch.equal(again[0], a) and torch.equal(again[1], b)


def test_reduce_features_is_fixed_and_bounded():
    features = torch.randn(5, 3, 10, 10)
    assert reduce_features(features, 4, None).shape == (5, 48)
    assert reduce_features(torch.randn(5, 3, 2, 2), 4, None).shape == (5, 12)  # never upsampled
    projection = torch.randn(48, 16)
    torch.testing.assert_close(reduce_features(features, 4, projection)[:2], reduce_features(features[:2], 4, projection))


def test_product_rejects_bad_arguments():
    with pytest.raises(EncodersError, match="checkpoints must be one of"):
        Products([SimilarityDiagnostics()], checkpoints="every")
    with pytest.raises(EncodersError, match="unknown \\['cka'\\]"):
        SimilarityDiagnostics(measures=["cka"])
    with pytest.raises(EncodersError, match="max_features"):
        SimilarityDiagnostics(max_features=0)


def test_wandb_table_has_one_row_per_score(fitted):
    from types import SimpleNamespace

    from pytorch_lightning.loggers import WandbLogger

    class Recorder(WandbLogger):
        def __init__(self) -> None:  # no W&B run: only the calls are recorded
            self.tables, self.images = {}, {}

        def log_table(self, key, columns=None, data=None, dataframe=None, step=None) -> None:
            self.tables[key] = dataframe

        def log_image(self, key, images, step=None, **kwargs) -> None:
            self.images[key] = images

    root, _, checkpoint, _ = fitted
    path = _products(root, checkpoint)["last"]
    with xr.open_dataset(path, engine="h5netcdf") as stored:
        scores = stored.load()
    recorder = Recorder()
    Products._log_wandb(SimpleNamespace(loggers=[recorder]), "last", path, [path.with_suffix(".png")], scores)
    frame = recorder.tables["similarity/last"]
    assert len(frame) == scores["score"].size
    assert {"measure", "layer", "baseline", "session", "score"} <= set(frame.columns)
    assert recorder.images == {"products/last/similarity": [str(path.with_suffix(".png"))]}


def test_too_few_stimuli_and_no_trials_give_nan_with_a_note(tmp_path, session_factory):
    from encoders.similarity.diagnostics import similarity_diagnostics

    path = tmp_path / "small.h5"
    # 12 test images: too few for ridge_r2's 5 outer x 5 inner folds; no single trials: no ceiling
    write_dataset(path, [session_factory("s0", n_images=60, n_neurons=5, size=16, trials=False)])
    dm = RecordedDataModule(str(path))
    dm.setup("test")
    model = Encoder(core=CORE, readout=READOUT, sessions=dm.session_info(), input_shape=list(dm.input_shape()),
                    transform=dm.transform.state())
    scores = similarity_diagnostics(model, dm, ["cka_linear", "ridge_r2"], layers=False, seed=1, max_features=16)
    assert list(scores.layer.values) == ["output"] and int(scores.n_stimuli.sel(session="s0")) == 12
    assert np.isnan(scores["score"].sel(measure="ridge_r2").values).all()
    assert np.isfinite(scores["score"].sel(measure="cka_linear", baseline=["model", "random_init", "shuffled"]).values).all()
    assert np.isnan(scores["score"].sel(baseline="ceiling").values).all()
    assert "ridge_r2 on session s0, output" in scores.attrs["notes"] and "too few" in scores.attrs["notes"]
