"""Fault tolerance: a fit killed with SIGKILL mid-epoch resumes from `last.ckpt` and ends bit for bit
like an uninterrupted run with the same seed; a product killed mid-write re-runs to completion and
never leaves a corrupt file.

What an exact resume needs, and what had to change for it (Lightning 2.6, CPU):
- Where in the epoch: Lightning restarts an unfinished epoch by iterating the training loader again
  and counting the batches it already did as done; a plain loader would replay the epoch's FIRST
  batches. The training loader (`ResumableSessionLoader`) implements Lightning's dataloader
  `state_dict`/`load_state_dict` protocol, so the batch sampler, deterministic per (seed, epoch),
  skips exactly the batches already trained on. A checkpoint written at the end of an epoch
  resumes at the epoch boundary (nothing to skip).
- Which epoch: Lightning never called `set_epoch` on our batch sampler (it only looks at
  `loader.sampler` and `loader.batch_sampler.sampler`), so every epoch had epoch 0's order; and on
  resume it starts iterating before it would call it. The loader now reads the trainer's epoch
  counter when iteration starts.
- The random stream: dropout draws from torch's global generator. Checkpoints store every
  generator's state and the model restores it just before the first resumed step; the loaders use
  private generators, so creating their iterators no longer shifts the global stream.
- The LR schedule: Lightning steps ReduceLROnPlateau after the epoch's checkpoint was written and
  skips that step in the epoch a fit resumes in; the model steps it right after validation instead.
A checkpoint every N steps mid-epoch comes from `ModelCheckpoint(last_every_n_train_steps=N)`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
import xarray as xr

import fit_runs
from encoders.cli import main as encoders_main

pytestmark = pytest.mark.filterwarnings("ignore")

# The killed runs are subprocesses started with one thread; the runs made in this process (cheaper:
# no second start of torch and Lightning) must use one too for bit-identical arithmetic.
torch.set_num_threads(1)

KILL_STEP = 17  # epoch 1 (10 batches an epoch), 7 of its 10 batches done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny twin, and one uninterrupted 4-epoch fit to compare with."""
    folder = tmp_path_factory.mktemp("resume")
    data = fit_runs.write_tiny_twin(folder / "twin.h5")
    env = fit_runs.environment(folder)
    config = fit_runs.write_config(folder / "reference.yaml", fit_runs.tiny_config(folder / "reference", data))
    assert fit_runs.train_in_process(["fit", "--config", str(config)]) == 0
    return {"folder": folder, "data": data, "env": env,
            "reference": fit_runs.read_checkpoint_state(folder / "reference" / "checkpoints" / "last.ckpt")}


def _kill_then_resume(runs, name: str, every_n_steps: int | None, by_keyword: bool):
    """Kill a fit at KILL_STEP, then resume it with `--ckpt_path last` (or the file's path)."""
    folder, env = runs["folder"], runs["env"]
    flag = folder / f"{name}.flag"
    config = fit_runs.tiny_config(folder / name, runs["data"], last_every_n_train_steps=every_n_steps,
                                  callbacks=[fit_runs.pause_callback(KILL_STEP, flag)])
    killed = fit_runs.write_config(folder / f"{name}_killed.yaml", config)
    assert fit_runs.start_and_kill_at(["fit", "--config", str(killed)], env, flag) == -9  # SIGKILL, no clean-up ran
    last = folder / name / "checkpoints" / "last.ckpt"
    interrupted = torch.load(last, map_location="cpu", weights_only=True)

    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # the same run, without the pause
    resumed = fit_runs.write_config(folder / f"{name}_resumed.yaml", config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = fit_runs.fit_in_process(["fit", "--config", str(resumed), "--ckpt_path", "last" if by_keyword else str(last)])
    assert cli.trainer.ckpt_path == str(last)  # it did resume, from the killed run's last.ckpt
    assert not [w for w in caught if "not resumable" in str(w.message)]
    return interrupted, fit_runs.read_checkpoint_state(last)


def test_killed_mid_epoch_resumes_from_a_mid_epoch_checkpoint_exactly(runs):
    interrupted, resumed = _kill_then_resume(runs, "steps", every_n_steps=3, by_keyword=True)
    # the newest last.ckpt was written mid-epoch: epoch 1 after step 15, 5 of its 10 batches done
    assert (interrupted["epoch"], interrupted["global_step"]) == (1, 15)
    [loader] = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader["epoch"], loader["batches_done"], loader["batches"]) == (1, 5, 10)
    fit_runs.assert_same_run(runs["reference"], resumed)
    assert runs["reference"]["best_model_score"] > 0.15  # it did learn (untrained ~0.0)


def test_killed_mid_epoch_resumes_from_the_epoch_end_checkpoint_exactly(runs):
    interrupted, resumed = _kill_then_resume(runs, "epochs", every_n_steps=None, by_keyword=False)
    assert (interrupted["epoch"], interrupted["global_step"]) == (0, 10)  # the end of epoch 0
    fit_runs.assert_same_run(runs["reference"], resumed)


# ---- products: a kill mid-write leaves no corrupt file; the re-run finishes; a finished one is kept ----
STALL_WRITE = '''
import sys, time
from pathlib import Path

import xarray as xr

from encoders.cli import main

flag = Path(sys.argv[1])
write = xr.Dataset.to_netcdf


def write_half_then_stall(self, path, *args, **kwargs):
    write(self, path, *args, **kwargs)
    with open(path, "r+b") as handle:  # as if the process died halfway through writing
        handle.truncate(handle.seek(0, 2) // 2)
    flag.write_text(str(path))
    time.sleep(600)


xr.Dataset.to_netcdf = write_half_then_stall
sys.exit(main(sys.argv[2:]))
'''


def test_product_killed_mid_write_reruns_to_completion(runs, tmp_path, capsys):
    checkpoint = runs["folder"] / "reference" / "checkpoints" / "last.ckpt"
    out = tmp_path / "products"
    args = ["mei", str(checkpoint), "--neurons", "[twin0/twin0-n000, twin1/twin1-n003]", "--method.seeds", "[0, 1]",
            "--method.steps", "5", "--out", str(out)]
    driver, flag = tmp_path / "stall_write.py", tmp_path / "writing.flag"
    driver.write_text(STALL_WRITE)
    process = subprocess.Popen([sys.executable, str(driver), str(flag), *args], env=runs["env"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        fit_runs.wait_for(flag, process)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    # the half-written file is a hidden temporary; the product itself does not exist
    assert not (out / "mei_ga.nc").exists()
    assert [p.name.startswith(".mei_ga.tmp-") for p in out.iterdir()] == [True]

    assert encoders_main(args) == 0
    with xr.open_dataset(out / "mei_ga.nc", engine="h5netcdf") as mei:
        assert mei.sizes["neuron"] == 2 and mei.sizes["seed"] == 2
        assert mei.neuron_id.values.tolist() == ["twin0-n000", "twin1-n003"]
        assert float(mei.activation.min()) > 0
    assert sorted(p.name for p in out.iterdir()) == ["mei_ga.nc", "mei_ga.png"]  # the stale temporary is gone
    made = (out / "mei_ga.nc").stat().st_mtime_ns

    capsys.readouterr()
    assert encoders_main(args) == 0  # finished: skipped by fingerprint, not made again
    assert "kept" in capsys.readouterr().out
    assert (out / "mei_ga.nc").stat().st_mtime_ns == made
