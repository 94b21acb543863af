"""Encoder, EncodingModel, ensembles and train.py: real (tiny) Lightning runs on a tiny synthetic twin."""

from __future__ import annotations


import pytest
import pytorch_lightning as pl
import torch

from encoders.callbacks import EpochTimer, ReadoutFigures
from encoders.checkpoints import load_encoder
from encoders.datasets.datamodule import RecordedDataModule
from encoders.datasets.io import write_dataset
from encoders.encoder import ConfigError, Encoder
from encoders.ensemble import Ensemble
from encoders.errors import EncodersError
from encoders.training import EncodingModel, ModelCheckpoint
from encoders.twin import make_twin

CORE = {"type": "stacked", "hidden_channels": 8, "layers": 2, "input_kernel": 5, "hidden_kernel": 3, "gamma_input": 0.1}
READOUTS = {
    "gaussian": {"type": "gaussian", "gauss_type": "isotropic", "gamma_features": 0.001},
    "attention": {"type": "attention", "embed_dim": 8, "heads": 2, "gamma_features": 0.001},
}


@pytest.fixture(scope="module")
def twin_file(tmp_path_factory):
    sessions, truth = make_twin(n_sessions=2, neurons_per_session=6, images_per_session=240, image_size=24, seed=0)
    path = tmp_path_factory.mktemp("twin") / "twin.h5"
    write_dataset(path, sessions, ground_truth=truth.state_arrays())
    return path


def _fit(path, root, readout="attention", epochs=2, seed=0):
    pl.seed_everything(seed, workers=True)
    dm = RecordedDataModule(str(path), batch_size=32)
    model = EncodingModel(core=CORE, readout=READOUTS[readout], lr=0.01)
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", monitor="val/correlation", mode="max", save_last=True)
    trainer = pl.Trainer(
        max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[checkpoint, ReadoutFigures(neurons_per_session=3), EpochTimer()], default_root_dir=root, deterministic=True, accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    return model, dm, trainer, checkpoint


@pytest.mark.parametrize("readout", ["gaussian", "attention"])
def test_fit_lowers_validation_loss_and_reloads_identically(twin_file, tmp_path, readout):
    model, dm, trainer, checkpoint = _fit(twin_file, tmp_path, readout)
    before = EncodingModel(core=CORE, readout=READOUTS[readout], data_info=model.hparams.data_info)
    val = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    untrained = val.validate(before, datamodule=dm, verbose=False)[0]
    trained = val.validate(model, datamodule=dm, verbose=False)[0]
    # per-element Poisson NLL without log(y!): differences are small in absolute terms
    assert trained["val/poisson_loss"] < untrained["val/poisson_loss"] - 0.02, (untrained, trained)
    # two tiny epochs of fresh batch orders: the attention readout gains ~0.07, the Gaussian more
    assert trained["val/correlation"] > untrained["val/correlation"] + 0.05, (untrained, trained)

    # best and last are both kept; last is the final state even when the last epoch did not improve
    assert checkpoint.best_model_path and checkpoint.best_model_path != checkpoint.last_model_path
    reloaded = load_encoder(checkpoint.last_model_path)
    model.eval()
    images = dm.tier_data("twin1", "test")["images"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images, "twin1"), model(images, "twin1"), rtol=0, atol=0)
    assert reloaded.neuron_ids("twin0")[:2] == ["twin0-n000", "twin0-n001"]
    assert reloaded.image_transform == dm.transform
    assert (tmp_path / "readouts.png").stat().st_size > 1000  # the end-of-fit readout figure
    # EpochTimer: the last epoch's seconds and the running total over both epochs
    seconds, elapsed = (float(trainer.callback_metrics[f"time/{k}_seconds"]) for k in ("epoch", "elapsed"))
    assert 0 < seconds < elapsed


def test_rates_are_positive_and_sessions_checked(twin_file):
    dm = RecordedDataModule(str(twin_file))
    dm.setup("fit")
    model = Encoder(CORE, READOUTS["gaussian"], dm.session_info(), dm.input_shape(), dm.transform.state())
    rates = model(torch.randn(4, 1, 24, 24) * 5, "twin0")
    assert rates.shape == (4, 6) and (rates > 0).all()
    with pytest.raises(KeyError, match="unknown session 'nope'"):
        model(torch.randn(1, 1, 24, 24), "nope")
    # bias starts at the mean training response: initial rates are close to each neuron's mean
    with torch.no_grad():
        model.eval()
        model.readouts["twin0"].features.zero_()
        mean = torch.tensor(dm.session_info()["twin0"]["mean_response"])
        torch.testing.assert_close(model(torch.zeros(1, 1, 24, 24), "twin0")[0], mean, rtol=1e-4, atol=1e-3)


def test_ensemble_is_the_mean_of_its_members(twin_file, tmp_path):
    paths = []
    for seed in (0, 1):
        _, dm, _, checkpoint = _fit(twin_file, tmp_path / str(seed), "gaussian", epochs=1, seed=seed)
        paths.append(checkpoint.last_model_path)
    ensemble = Ensemble.from_checkpoints(paths)
    members = [load_encoder(p) for p in paths]
    images = dm.tier_data("twin0", "test")["images"]
    with torch.no_grad():
        expected = (members[0](images, "twin0") + members[1](images, "twin0")) / 2
        torch.testing.assert_close(ensemble(images, "twin0"), expected)
        assert not torch.allclose(members[0](images, "twin0"), members[1](images, "twin0"))
    assert ensemble.sessions == ["twin0", "twin1"] and ensemble.input_shape == (1, 24, 24)


def test_misspelt_config_keys_fail_clearly():
    sessions = {"s": {"neuron_ids": ["a"], "mean_response": [1.0], "n_train": 1}}
    transform = {"grayscale": True, "crop": [0, 0, 0, 0], "resize": None, "mean": 0.0, "std": 1.0}
    with pytest.raises(ConfigError, match=r"core: unknown argument\(s\) \['hiden_channels'\] for core type 'stacked'; allowed: .*hidden_channels"):
        EncodingModel(core={"type": "stacked", "hiden_channels": 8}, readout=READOUTS["gaussian"])
    with pytest.raises(ConfigError, match=r"readout.type must be one of \['attention', 'gaussian'\], got 'atention'"):
        EncodingModel(core=CORE, readout={"type": "atention"})
    # the plain Encoder checks the same, and the data-derived readout arguments are not the config's to set
    with pytest.raises(ConfigError, match=r"core: unknown argument\(s\) \['hiden_channels'\]"):
        Encoder({"type": "stacked", "hiden_channels": 8}, READOUTS["gaussian"], sessions, [1, 16, 16], transform)
    with pytest.raises(ConfigError, match=r"readout: \['n_neurons'\] are set from the data"):
        Encoder(CORE, {**READOUTS["gaussian"], "n_neurons": 3}, sessions, [1, 16, 16], transform)


def test_train_py_rejects_a_misspelt_key(tmp_path, capsys):
    # in this process (test_bad_inputs runs train.py as a real process for the same kind of error)
    from encoders.training.cli import main

    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  core: {type: stacked}\n  readout: {type: gaussian}\n  learning_rate: 0.1\ndata:\n  path: x.h5\n")
    assert main(["fit", "--config", str(config)]) == 2
    stderr = capsys.readouterr().err
    assert "learning_rate" in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_bad_checkpoint_is_named(tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncodersError, match="broken.ckpt: not a readable encoders checkpoint"):
        load_encoder(bad)
    with pytest.raises(EncodersError, match="missing.ckpt: checkpoint not found"):
        load_encoder(tmp_path / "missing.ckpt")
