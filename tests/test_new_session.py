"""A new session on a trained core (`model.init_from`, `model.freeze_core`): real tiny fits on the twin.

Readout-only training keeps the core (BatchNorm statistics included) and the checkpoint's readouts
bit for bit, so the new checkpoint predicts the old sessions exactly as the old one did, and learns
the new session; fine-tuning (`freeze_core: false`) moves the core too.
"""

from __future__ import annotations

import pytest
import torch

import fit_runs
from encoders.checkpoints import load_encoder
from encoders.datasets.io import read_arrays

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A core trained on session twin0 only (8 epochs)."""
    folder = tmp_path_factory.mktemp("new_session")
    data = fit_runs.write_tiny_twin(folder / "twin.h5")
    config = fit_runs.tiny_config(folder / "base", data, max_epochs=8)
    config["data"]["sessions"] = ["twin0"]
    assert fit_runs.train_in_process(["fit", "--config", str(fit_runs.write_config(folder / "base.yaml", config))]) == 0
    return {"folder": folder, "data": data, "checkpoint": folder / "base" / "checkpoints" / "last.ckpt"}


def _fit_new(base, name: str, sessions: list[str], epochs: int = 2, **model) -> tuple[int, dict]:
    config = fit_runs.tiny_config(base["folder"] / name, base["data"], max_epochs=epochs, test_after_fit=True,
                                  callbacks=[{"class_path": "encoders.callbacks.MetricsTable"}])
    config["data"]["sessions"] = sessions
    config["model"] = {"init_from": str(base["checkpoint"]), **model}
    code = fit_runs.train_in_process(["fit", "--config", str(fit_runs.write_config(base["folder"] / f"{name}.yaml", config))])
    return code, config


def test_readout_only_keeps_core_and_old_readouts_and_learns_the_new_session(base):
    code, _ = _fit_new(base, "readout_only", ["twin1"], epochs=8, lr=0.03)
    assert code == 0
    old, new = load_encoder(base["checkpoint"]), load_encoder(base["folder"] / "readout_only" / "checkpoints" / "last.ckpt")
    assert new.sessions == ["twin0", "twin1"]
    before, after = old.state_dict(), new.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the core or the old readout changed"
    images = read_arrays(base["data"], "twin0", ["images"])["images"][:32]
    x = old.image_transform(images)
    with torch.no_grad():
        torch.testing.assert_close(new(x, "twin0"), old(x, "twin0"), rtol=0, atol=0)  # old session: same predictions
    import xarray as xr

    with xr.open_dataset(base["folder"] / "readout_only" / "test_metrics.nc", engine="h5netcdf") as table:
        assert set(table.session.values) == {"twin1"}
        # the readout learned: 0.15 here, against 0.23 for a whole model trained on twin1 alone as long (tiny core)
        assert float(table.correlation_to_average.mean()) > 0.08
    # the new checkpoint's transform is the old one's: the new data were z-scored with the core's statistics
    assert new.image_transform == old.image_transform


def test_fine_tuning_moves_the_core(base):
    code, _ = _fit_new(base, "fine_tune", ["twin0", "twin1"], freeze_core=False, lr=0.001)
    assert code == 0
    old, new = load_encoder(base["checkpoint"]), load_encoder(base["folder"] / "fine_tune" / "checkpoints" / "last.ckpt")
    core = [k for k in old.state_dict() if k.startswith("core.") and k.endswith("weight")]
    assert any(not torch.equal(old.state_dict()[k], new.state_dict()[k]) for k in core)


@pytest.mark.parametrize("sessions, data, model, fragments", [
    (["twin0"], {}, {}, ["session(s) ['twin0'] are already in the checkpoint", "freeze_core: false"]),
    (["twin1"], {"resize": [12, 12]}, {}, ["data image transform", "'resize': [12, 12]", "'resize': None"]),
    (["twin1"], {}, {"readout": {"type": "gaussian"}}, ["model.readout", "differs from the readout of model.init_from"]),
], ids=["session_already_there", "other_transform", "other_readout"])
def test_refused_in_one_line_before_training(base, tmp_path, capsys, sessions, data, model, fragments):
    config = fit_runs.tiny_config(tmp_path / "run", base["data"], max_epochs=1)
    config["data"].update({"sessions": sessions, **data})
    config["model"] = {"init_from": str(base["checkpoint"]), **model}
    capsys.readouterr()
    assert fit_runs.train_in_process(["fit", "--config", str(fit_runs.write_config(tmp_path / "run.yaml", config))]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "run").exists()
