"""A disk that fills up mid-run: every checkpoint is whole or absent, the error is one line naming
the file, and the run continues with `--ckpt_path last` once there is space again.

The full disk is a writer that fails mid-file: `torch.save` writes half of the checkpoint and then
raises ENOSPC, as a write() on a full filesystem does.
"""

from __future__ import annotations

import errno
import io

import pytest
import torch

import fit_runs
from encoders.checkpoints import read_checkpoint

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_thread")]


def test_a_full_disk_leaves_no_truncated_checkpoint_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    data = fit_runs.write_tiny_twin(tmp_path / "twin.h5")
    config = fit_runs.write_config(tmp_path / "run.yaml", fit_runs.tiny_config(tmp_path / "run", data, max_epochs=3))
    real_save, calls = torch.save, []

    def disk_fills_at_the_third_checkpoint(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) < 3:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as handle:
            handle.write(buffer.getvalue()[: buffer.tell() // 2])  # half of it, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills_at_the_third_checkpoint)
    assert fit_runs.train_in_process(["fit", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("train: error: ") and "No space left on device" in error and ".ckpt" in error
    monkeypatch.setattr(torch, "save", real_save)

    folder = tmp_path / "run" / "checkpoints"
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name], "a partial temporary file was left"
    for path in folder.glob("*.ckpt"):
        read_checkpoint(path)  # every checkpoint left is whole
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 0  # the state before the failed write

    assert fit_runs.train_in_process(["fit", "--config", str(config), "--ckpt_path", "last"]) == 0
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 2
