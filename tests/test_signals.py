"""Stopping a command by signal, as a user or a scheduler does it (real processes).

Ctrl-C (SIGINT) exits 130 and SIGTERM 143, each with one line on stderr and no traceback; a fit
stopped mid-epoch names the exact command that continues it, and that command finishes the run.
A signal while starting (imports, data set-up, before the first epoch) stops as cleanly.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

import fit_runs

pytestmark = pytest.mark.filterwarnings("ignore")


def _stop(process: subprocess.Popen, signum: int) -> tuple[int, list[str]]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return fit_runs.write_tiny_twin(tmp_path_factory.mktemp("signals") / "twin.h5")


def test_sigterm_mid_epoch_stops_with_143_and_the_command_that_continues(twin, tmp_path):
    flag = tmp_path / "paused"
    config = fit_runs.tiny_config(tmp_path / "run", twin, max_epochs=2, last_every_n_train_steps=2,
                                  callbacks=[fit_runs.pause_callback(5, flag)])
    path = fit_runs.write_config(tmp_path / "run.yaml", config)
    env = fit_runs.environment(tmp_path)
    process = subprocess.Popen([sys.executable, "train.py", "fit", "--config", str(path)], cwd=fit_runs.ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    fit_runs.wait_for(flag, process)
    code, lines = _stop(process, signal.SIGTERM)
    assert code == 143, lines
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith("train: stopped by SIGTERM"), lines
    command = lines[-1].split("Continue with: ", 1)[1]
    assert command == f"python train.py fit --config {shlex.quote(str(path))} --ckpt_path last"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()  # step 4's state
    # the printed command, without the pause, finishes the run from there
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    fit_runs.write_config(path, config)
    result = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=fit_runs.ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = fit_runs.read_checkpoint_state(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert (state["epoch"], state["global_step"]) == (1, 20)  # both epochs done (10 steps each)


# Ctrl-C while torch and Lightning are imported; SIGTERM while the data and model are set up
@pytest.mark.parametrize("signum, status, delay", [(signal.SIGINT, 130, 0.3), (signal.SIGTERM, 143, 3.0)])
def test_a_signal_while_starting_stops_cleanly(twin, tmp_path, signum, status, delay):
    config = fit_runs.tiny_config(tmp_path / "run", twin, max_epochs=50)
    path = fit_runs.write_config(tmp_path / "run.yaml", config)
    process = subprocess.Popen([sys.executable, "train.py", "fit", "--config", str(path)], cwd=fit_runs.ROOT,
                               env=fit_runs.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    code, lines = _stop(process, signum)
    assert code == status, lines
    assert "Traceback" not in "\n".join(lines) and len(lines) == 1, lines
    assert lines[0].startswith("train: stopped by " + signal.Signals(signum).name), lines
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_prior_training_stops_on_sigint_and_continues(tmp_path):
    """`encoders prior train`: Ctrl-C gives 130 and one line; the same command then finishes the prior."""
    from test_prior import CONFIG, smooth_images  # noqa: F401  (the tiny prior of the prior tests)

    from conftest import make_session
    from encoders.datasets.io import write_dataset

    session = make_session("s0", n_images=40, size=16)
    session.images = smooth_images(40, 16, seed=3)
    data = write_dataset(tmp_path / "images.h5", [session]) and tmp_path / "images.h5"
    config = tmp_path / "prior.yaml"
    config.write_text(CONFIG.format(path=data).replace("max_steps: 24", "max_steps: 400"))
    command = [sys.executable, "-m", "encoders.cli", "prior", "train", "--config", str(config), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=fit_runs.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    code, lines = _stop(process, signal.SIGINT)
    assert code == 130 and lines[-1].startswith("encoders: stopped by SIGINT"), lines  # after Lightning's start-up lines
    assert "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "out" / "unet").exists()  # stopped before the end: no prior saved
    config.write_text(CONFIG.format(path=data).replace("max_steps: 24", "max_steps: 30"))  # finish soon
    # (the schedule's length is a setting of the run: a shorter one resumes only while past steps fit in it)
    result = subprocess.run(command, cwd=fit_runs.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
