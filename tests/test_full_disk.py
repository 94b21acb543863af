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
    assert error.startswith("train: error: ") and "no space left" in error and ".ckpt" in error and "--ckpt_path last" in error
    monkeypatch.setattr(torch, "save", real_save)

    folder = tmp_path / "run" / "checkpoints"
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name], "a partial temporary file was left"
    for path in folder.glob("*.ckpt"):
        read_checkpoint(path)  # every checkpoint left is whole
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 0  # the state before the failed write

    assert fit_runs.train_in_process(["fit", "--config", str(config), "--ckpt_path", "last"]) == 0
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 2


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root, as on the developers' machines and CI); skipped where mounting is not allowed."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (the full-disk checkpoint test above runs everywhere)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_data_file_or_product_on_a_full_disk_is_one_line_and_nothing_half_written(small_disk, tmp_path, capsys):
    """HDF5 crashes the process (segmentation fault) when a write fails for lack of space: the writers check
    first; other files (figures, NetCDF) turn ENOSPC into one line; nothing half-written is left."""
    from encoders.cli import main

    assert main(["prepare", "synthetic", str(small_disk / "twin.h5"), "--n_sessions", "1", "--neurons_per_session", "5",
                 "--images_per_session", "3000", "--image_size", "32"]) == 2
    assert "twin.h5: needs about" in capsys.readouterr().err
    assert list(small_disk.iterdir()) == []
    # a product that no longer fits: one line, whatever is there is whole
    data = fit_runs.write_tiny_twin(tmp_path / "twin.h5")
    config = fit_runs.write_config(tmp_path / "run.yaml", fit_runs.tiny_config(tmp_path / "run", data, max_epochs=1))
    assert fit_runs.train_in_process(["fit", "--config", str(config)]) == 0
    (small_disk / "ballast").write_bytes(b"0" * 1_990_000)
    out = small_disk / "meis"
    code = main(["mei", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--top_k", "5", "--data", str(data),
                 "--out", str(out), "--method.steps", "2", "--method.seeds", "[0,1,2,3,4,5,6,7]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and ("no space left" in err[-1] or "needs about" in err[-1]), err
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    for nc in out.glob("*.nc"):
        import xarray as xr

        xr.open_dataset(nc, engine="h5netcdf").close()  # whole
    (small_disk / "ballast").unlink()  # space is back: the same command finishes
    assert main(["mei", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--top_k", "5", "--data", str(data),
                 "--out", str(out), "--method.steps", "2", "--method.seeds", "[0,1,2,3,4,5,6,7]"]) == 0
    assert (out / "mei_ga.png").is_file()
