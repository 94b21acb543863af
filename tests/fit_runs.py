"""Helpers for tests that run train.py on a tiny synthetic twin: the data, the YAML, the runs, the results."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from encoders.twin import write_twin

ROOT = Path(__file__).resolve().parents[1]

# Test callbacks, importable by the runs as `fit_helpers.X` (see `environment`). PauseAt: at the end
# of optimizer step `step` write `flag` and sleep, so the test can SIGKILL a real process mid-epoch
# at a reproducible place. RecordValidation: append every validation's metrics to a JSON-lines file.
HELPERS_MODULE = '''
import json
import time
from pathlib import Path

import pytorch_lightning as pl


class RecordValidation(pl.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            with open(self.path, "a") as handle:
                handle.write(json.dumps(metrics) + "\\n")


class PauseAt(pl.Callback):
    def __init__(self, step: int, flag: str):
        self.step = step
        self.flag = flag

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.flag).write_text(str(self.step))
            time.sleep(600)
'''


def write_tiny_twin(path: Path) -> Path:
    """2 sessions x 5 neurons x 120 images of 16 px: 12 training batches of 16 per epoch."""
    write_twin(path, n_sessions=2, neurons_per_session=5, images_per_session=120, image_size=16, seed=0,
               validation_fraction=0.2, test_fraction=0.2, test_repeats=3)
    return path


def fit_tiny(folder: Path, epochs: int = 1) -> dict:
    """A tiny twin in `folder` and a checkpoint fitted on it for `epochs` (in this process): data, checkpoint, folder."""
    data = write_tiny_twin(folder / "twin.h5")
    config = tiny_config(folder / "run", data, max_epochs=epochs)
    assert train_in_process(["fit", "--config", str(write_config(folder / "run.yaml", config))]) == 0
    return {"folder": folder, "data": data, "checkpoint": folder / "run" / "checkpoints" / "last.ckpt"}


def tiny_config(root: Path, data: Path, max_epochs: int = 4, last_every_n_train_steps: int | None = None,
                callbacks: list[dict] | None = None, test_after_fit: bool = False) -> dict:
    """A tiny experiment: small core, attention readout WITH dropout (so the random stream matters)
    and ReduceLROnPlateau with patience 0 (so the scheduler's state matters)."""
    checkpoint = {"dirpath": str(root / "checkpoints"), "filename": "best-{epoch:02d}", "monitor": "val/correlation",
                  "mode": "max", "save_last": True}
    if last_every_n_train_steps:
        checkpoint["last_every_n_train_steps"] = last_every_n_train_steps
    return {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root), "accelerator": "cpu", "devices": 1, "max_epochs": max_epochs,
            "deterministic": True, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 1,
            "callbacks": [{"class_path": "encoders.training.ModelCheckpoint", "init_args": checkpoint}, *(callbacks or [])],
        },
        "model": {
            "core": {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3},
            "readout": {"type": "attention", "embed_dim": 4, "heads": 1, "dropout": 0.2},
            "lr": 0.01, "lr_patience": 0,
        },
        "data": {"path": str(data), "batch_size": 16},
        "test_after_fit": test_after_fit,
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def pause_callback(step: int, flag: Path) -> dict:
    return {"class_path": "fit_helpers.PauseAt", "init_args": {"step": step, "flag": str(flag)}}


def record_callback(path: Path) -> dict:
    return {"class_path": "fit_helpers.RecordValidation", "init_args": {"path": str(path)}}


def write_helpers(folder: Path) -> Path:
    """Write the helper callbacks as `folder/fit_helpers.py`; put `folder` on the path of the runs."""
    (folder / "fit_helpers.py").write_text(HELPERS_MODULE)
    return folder


def environment(helpers: Path | None = None) -> dict[str, str]:
    """One thread (as the test process uses: other test modules set it), offline W&B, helper modules importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    if helpers is not None:
        write_helpers(helpers)
        env["PYTHONPATH"] = os.pathsep.join([str(helpers), env.get("PYTHONPATH", "")])
    return env


def train(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in the repository, to completion."""
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def train_in_process(args: list[str]) -> int:
    """train.py's main(ARGS) in this process (no second start of torch and Lightning); returns its exit status."""
    spec = importlib.util.spec_from_file_location("encoders_train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


def fit_in_process(args: list[str]):
    """The training CLI run on ARGS in this process, without main's error handling; returns the CLI (its trainer, model)."""
    from encoders.training.cli import run

    return run(args)


def wait_for(flag: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `flag` exists; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if process.poll() is not None:
            raise AssertionError(f"the process ended before the kill point:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the process did not reach the kill point in time")
        time.sleep(0.05)


def start_and_kill_at(args: list[str], env: dict[str, str], flag: Path) -> int:
    """Start `python train.py ARGS`, wait for `flag` (written by PauseAt), then SIGKILL it. Returns the exit code."""
    process = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(flag, process)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    return process.returncode


def read_checkpoint_state(path: Path) -> dict:
    """What a finished fit ended with: weights, epoch, step, best score, and the scheduler's state."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    callback = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))
    return {
        "state_dict": checkpoint["state_dict"],
        "epoch": checkpoint["epoch"],
        "global_step": checkpoint["global_step"],
        "best_model_score": float(callback["best_model_score"]),
        "best_model_path": Path(callback["best_model_path"]).name,
        "lr_scheduler": checkpoint["lr_schedulers"][0],
    }


def assert_same_run(a: dict, b: dict) -> None:
    """Bit-for-bit the same result: weights, progress, best metric and scheduler state."""
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["best_model_score"] == b["best_model_score"], (a["best_model_score"], b["best_model_score"])
    assert a["best_model_path"] == b["best_model_path"]
    assert a["lr_scheduler"]["best"] == b["lr_scheduler"]["best"]
    assert a["lr_scheduler"]["num_bad_epochs"] == b["lr_scheduler"]["num_bad_epochs"]
    assert a["lr_scheduler"]["_last_lr"] == b["lr_scheduler"]["_last_lr"]
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"], "a scheduler step was skipped"
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")
