"""`encoders twin record`: the twin's true neurons answer a stimulus folder, written as a new session."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fit_runs
from encoders.cli import main
from encoders.datasets.io import list_sessions, read_arrays, read_session
from encoders.twin import Twin
from encoders.twin.neurons import ground_truth_response


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("record")
    data = fit_runs.write_tiny_twin(folder / "twin.h5")
    stimuli = folder / "stimuli"
    stimuli.mkdir()
    images = read_arrays(data, "twin1", ["images"])["images"][:40]
    for i, image in enumerate(images):
        Image.fromarray(image).save(stimuli / f"mei_{500 + i:05d}.png")
    return {"folder": folder, "data": data, "stimuli": stimuli, "images": images}


def test_recorded_session_holds_the_true_neurons_answers(twin, capsys):
    out = twin["folder"] / "recorded.h5"
    assert main(["twin", "record", str(twin["data"]), str(twin["stimuli"]), str(out), "--sessions", "[twin0]",
                 "--repeats", "200", "--seed", "3"]) == 0
    assert list_sessions(out) == ["twin0", "twin0_rec", "twin1"]
    recorded, original = read_session(out, "twin0_rec"), read_session(twin["data"], "twin0")
    assert recorded.image_ids.tolist() == list(range(500, 540))  # ids from the file names
    assert recorded.trials.shape == (40, 200, 5) and not np.isnan(recorded.trials).any()
    assert recorded.neuron_ids.tolist() == original.neuron_ids.tolist()
    np.testing.assert_array_equal(recorded.neuron_meta["ground_truth_index"], original.neuron_meta["ground_truth_index"])
    truth = Twin.from_file(out)  # the ground truth came along: the new session scores like the others
    torch.testing.assert_close(truth.session_columns("twin0_rec"), truth.session_columns("twin0"))
    with torch.no_grad():
        rates = ground_truth_response(truth.truth, twin["images"].astype(np.float32), truth.session_columns("twin0")).numpy()
    # the mean of 200 Poisson trials is the true rate within a few standard errors
    error = (recorded.responses - rates) / np.sqrt(np.maximum(rates, 0.1) / 200)
    assert np.abs(error).max() < 6 and abs(error.mean()) < 0.3
    assert sorted(set(recorded.tiers)) == ["test", "train", "validation"]
    assert "twin0_rec" in capsys.readouterr().out


def test_every_session_records_by_default(twin):
    out = twin["folder"] / "all.h5"
    assert main(["twin", "record", str(twin["data"]), str(twin["stimuli"]), str(out), "--repeats", "2"]) == 0
    assert list_sessions(out) == ["twin0", "twin0_rec", "twin1", "twin1_rec"]
    a, b = read_session(out, "twin0_rec"), read_session(out, "twin1_rec")
    assert a.tiers.tolist() == b.tiers.tolist() and a.image_ids.tolist() == b.image_ids.tolist()


@pytest.mark.parametrize("change, fragment", [
    (lambda t: {"out": str(t["data"])}, "would overwrite the twin's data file"),
    (lambda t: {"sessions": "[nope]"}, "no session(s) ['nope']"),
    (lambda t: {"suffix": ""}, "--suffix"),
    (lambda t: {"repeats": "0"}, "--repeats"),
], ids=["out_is_data", "unknown_session", "empty_suffix", "zero_repeats"])
def test_bad_input_one_line(twin, tmp_path, capsys, change, fragment):
    options = {"out": str(tmp_path / "x.h5"), "sessions": "[twin0]", **change(twin)}
    argv = ["twin", "record", str(twin["data"]), str(twin["stimuli"]), options.pop("out")]
    for key, value in options.items():
        argv += [f"--{key}", value]
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "x.h5").exists()


def test_images_of_another_size_are_refused(twin, tmp_path, capsys):
    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(folder / "1.png")
    assert main(["twin", "record", str(twin["data"]), str(folder), str(tmp_path / "x.h5")]) == 2
    assert "the twin's neurons see grey 16x16 images" in capsys.readouterr().err
