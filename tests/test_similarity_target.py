"""What `encoders similarity captured` and `region` share: the target they read (`read_target`), and its bad inputs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from encoders.cli import main
from encoders.datasets.io import write_dataset
from encoders.twin import make_twin

# each command with the few steps and components its own options need
COMMANDS = {"captured": ["--steps", "3", "--components", "1"], "region": ["--steps", "3", "--targets", "2"]}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    sessions, truth = make_twin(n_sessions=1, neurons_per_session=5, images_per_session=40, image_size=16, seed=0)
    path = tmp_path_factory.mktemp("target") / "twin.h5"
    write_dataset(path, sessions, ground_truth=truth.state_arrays())
    return path


@pytest.mark.parametrize("command", list(COMMANDS))
def test_too_few_stimuli_names_the_measure(command, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    measure = "--measures" if command == "captured" else "--measure-a"
    argv = ["similarity", command, "--synthetic-target", "--stimuli", "3", "--units", "2", *COMMANDS[command],
            measure, "cka_linear_unbiased", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'cka_linear_unbiased' cannot score 3 stimuli" in err and "at least 4" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_dataset_inputs(command, data_file, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    base = ["similarity", command, *COMMANDS[command], "--out", str(out)]
    assert main(base + ["--data", str(data_file), "--session", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no session 'nope'" in err and "twin0" in err and err.count("\n") == 1
    nan_file = tmp_path / "nan.h5"  # responses with a NaN
    nan_file.write_bytes(data_file.read_bytes())
    with h5py.File(nan_file, "r+") as f:
        responses = f["sessions/twin0/responses"]
        values = responses[()]
        values[0, 0] = np.nan
        responses[...] = values
    assert main(base + ["--data", str(nan_file), "--session", "twin0", "--tier", "train"]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and err.count("\n") == 1
    assert not out.exists()
