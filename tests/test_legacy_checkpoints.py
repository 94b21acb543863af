"""Checkpoints of the previous version (format 1: before the Encoder/LightningModule split) still work.

tests/fixtures/legacy/{attention,gaussian}.ckpt and their *_meis.nc were written by the previous main
(commit 9c6cc14, see make.py there) from a 2-epoch fit on `fit_runs.write_tiny_twin`. They must load
as the same model (the same MEIs, to 1e-6), be tested by `train.py test --ckpt_path`, and resume a fit
with `fit --ckpt_path`, both with a W&B logger configured as in the shipped experiments: the issue was
that both commands crashed with "Error while merging hparams: the keys ['sessions'] ..." once a
logger was set, and a resumed fit also needs the old optimizer state in today's parameter order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import fit_runs
from encoders.checkpoints import load_encoder, read_checkpoint, upgrade, upgrade_hparams
from encoders.datasets.datamodule import RecordedDataModule
from encoders.products import compute_meis
from encoders.synthesis.gradient_ascent import GASettings
from encoders.training import EncodingModel

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_thread")]

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
READOUTS = ["attention", "gaussian"]
LEGACY_STEPS = 20  # 2 epochs of 10 training batches


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    """The data the fixtures were trained on (make.py: write_tiny_twin with its default arguments)."""
    return fit_runs.write_tiny_twin(tmp_path_factory.mktemp("legacy") / "twin.h5")


def _config(tmp: Path, data: Path, name: str, max_epochs: int, readout: str = "attention") -> Path:
    """The tiny experiment (fit_runs.tiny_config) with a W&B logger as the shipped configs have it, offline,
    and the test metrics table; the model section is the checkpoint's (a config of another architecture
    is refused, tests/test_bad_inputs.py), the rest merged in by --ckpt_path."""
    root = tmp / name
    config = fit_runs.tiny_config(root, data, max_epochs=max_epochs, callbacks=[{"class_path": "encoders.callbacks.MetricsTable"}])
    hparams = upgrade_hparams(dict(read_checkpoint(LEGACY / f"{readout}.ckpt")["hyper_parameters"]))
    config["model"] = {"core": hparams["core"], "readout": hparams["readout"]}
    config["trainer"]["logger"] = {
        "class_path": "pytorch_lightning.loggers.WandbLogger",
        "init_args": {"project": "encoders", "name": name, "save_dir": str(root), "offline": True},
    }
    return fit_runs.write_config(tmp / f"{name}.yaml", config)


@pytest.mark.parametrize("readout", READOUTS)
def test_old_checkpoints_make_the_same_meis(readout):
    model = load_encoder(LEGACY / f"{readout}.ckpt")
    with xr.open_dataset(LEGACY / f"{readout}_meis.nc", engine="h5netcdf") as stored:
        stored = stored.load()
    targets = list(zip(stored.session.values.tolist(), stored.neuron_id.values.tolist()))
    assert targets == [("twin0", "twin0-n000"), ("twin1", "twin1-n002")]  # what make.py chose
    meis = compute_meis(model, targets, GASettings(seeds=(0, 1), steps=20))
    np.testing.assert_allclose(meis.image.values, stored.image.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(meis.activation.values, stored.activation.values, rtol=1e-5, atol=0)
    np.testing.assert_allclose(meis.trace.values, stored.trace.values, rtol=1e-5, atol=0)
    assert meis.attrs["image_transform"] == stored.attrs["image_transform"]  # the old transform travels with the model


@pytest.mark.parametrize("readout", READOUTS)
def test_old_optimizer_state_is_brought_to_todays_parameter_order(readout):
    """Format 1 registered the readouts before the core (and kept Gaussian features transposed): each
    parameter must get its own Adam moments back, by name, whatever its position."""
    old = read_checkpoint(LEGACY / f"{readout}.ckpt")
    old_names = [k for k in old["state_dict"] if not k.endswith(("position_encoding", "running_mean", "running_var",
                                                                     "num_batches_tracked"))]
    old_moments = {name: old["optimizer_states"][0]["state"][i] for i, name in enumerate(old_names)}
    checkpoint = read_checkpoint(LEGACY / f"{readout}.ckpt")
    model = EncodingModel(**{k: v for k, v in upgrade(dict(checkpoint))["hyper_parameters"].items() if not k.startswith("_")})
    checkpoint = read_checkpoint(LEGACY / f"{readout}.ckpt")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    upgrade(checkpoint, trainable)
    assert trainable[0].startswith("encoder.core.") and old_names[0].startswith("readouts.")  # the orders differ
    state = checkpoint["optimizer_states"][0]["state"]
    assert sorted(state) == list(range(len(trainable)))
    for index, name in enumerate(trainable):
        parameter = model.get_parameter(name)
        moments = old_moments[name[len("encoder."):]]
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[index][key].shape == parameter.shape, name
            expected = moments[key].T if readout == "gaussian" and name.endswith(".features") else moments[key]
            torch.testing.assert_close(state[index][key], expected, rtol=0, atol=0)


def test_train_py_tests_an_old_checkpoint_with_a_wandb_logger(twin, tmp_path):
    """`python train.py test --config X --ckpt_path OLD` (a real process, as a user runs it)."""
    config = _config(tmp_path, twin, "tested", max_epochs=1)
    result = fit_runs.train(["test", "--config", str(config), "--ckpt_path", str(LEGACY / "attention.ckpt")],
                            fit_runs.environment(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Error while merging hparams" not in result.stderr
    assert list((tmp_path / "tested" / "wandb").glob("offline-run-*")), "the W&B logger did not run"
    with xr.open_dataset(tmp_path / "tested" / "test_metrics.nc", engine="h5netcdf") as table:
        table = table.load()
    assert table.sizes["neuron"] == 10 and str(LEGACY / "attention.ckpt") in table.attrs["checkpoint"]
    # the table holds the old model's own test correlations: computed here from its predictions
    model = load_encoder(LEGACY / "attention.ckpt")
    data = RecordedDataModule(str(twin))
    data.setup("test")
    for session in ("twin0", "twin1"):
        test = data.tier_data(session, "test")
        with torch.no_grad():
            rates = model(test["images"], session).numpy()
        responses = test["responses"].numpy()
        expected = [np.corrcoef(rates[:, n], responses[:, n])[0, 1] for n in range(rates.shape[1])]
        np.testing.assert_allclose(table.correlation.where(table.session == session, drop=True).values, expected, atol=1e-5)


@pytest.mark.parametrize("readout", READOUTS)
def test_fit_resumes_an_old_checkpoint_with_a_wandb_logger(twin, tmp_path, readout):
    """`fit --ckpt_path OLD` continues the old run for one more epoch (in this process: it is the same CLI)."""
    import wandb

    copy = tmp_path / "old.ckpt"
    shutil.copy(LEGACY / f"{readout}.ckpt", copy)
    config = _config(tmp_path, twin, "resumed", max_epochs=3, readout=readout)  # the old run stopped after 2 epochs
    try:
        cli = fit_runs.fit_in_process(["fit", "--config", str(config), "--ckpt_path", str(copy)])
    finally:
        wandb.finish()
    assert cli.trainer.ckpt_path == str(copy)
    assert cli.model.hparams.readout["type"] == readout  # the old checkpoint's model, not the config's
    last = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert last["encoders_format"] == 2 and "data_info" in last["hyper_parameters"] and "sessions" not in last["hyper_parameters"]
    assert (last["epoch"], last["global_step"]) == (2, LEGACY_STEPS + 10)
    assert list((tmp_path / "resumed" / "wandb").glob("offline-run-*")), "the W&B logger did not run"
    # it trained on from the old weights: one more epoch moves them a little, not back to a fresh start
    old = upgrade(read_checkpoint(copy))["state_dict"]
    weight = "encoder.core.layers.0.0.weight"
    change = (last["state_dict"][weight] - old[weight]).norm() / old[weight].norm()
    assert 0 < change < 0.5, change
    assert np.isfinite(cli.trainer.callback_metrics["val/correlation"].item())
