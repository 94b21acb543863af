"""A catalogue of bad inputs across the user surface (train.py and the `encoders` command): each gives
ONE error line naming what is wrong and where (file, field, key or argument), exits non-zero, prints
no Python traceback, and leaves no output behind.

Kinds: dataset files (missing, not HDF5, missing field, wrong shape, unknown session), configs
(unknown YAML key for train.py and for `encoders prepare synthetic --config`, misspelt core option,
misspelt readout type, ill-typed option), checkpoints (missing, truncated, not a checkpoint, a
pickled object, for products and for resuming a fit by path or with `--ckpt_path last`), neuron ids (unknown session, unknown id),
diffusion priors (missing folder, corrupt weights) and command-line values (not a number, not a
choice, out of range, a flag of another method).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
import torch

import fit_runs
from encoders.cli import main as encoders_main

pytestmark = pytest.mark.filterwarnings("ignore")

SHIPPED_PRIOR = fit_runs.ROOT / "data" / "priors" / "natural32"
MARKER = "pwned.txt"  # what the pickled payload would create if it were ever unpickled


class Payload:
    """Unpickling this runs code: a checkpoint holding it must be refused, never loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny twin and a checkpoint trained on it for one epoch."""
    folder = tmp_path_factory.mktemp("good")
    data = fit_runs.write_tiny_twin(folder / "twin.h5")
    config = fit_runs.tiny_config(folder / "run", data, max_epochs=1)
    fit_runs.train_in_process(["fit", "--config", str(fit_runs.write_config(folder / "run.yaml", config))])
    return {"folder": folder, "data": data, "checkpoint": folder / "run" / "checkpoints" / "last.ckpt"}


@dataclass
class Inputs:
    """Where a case builds its bad input; every case writes its output (if any) to `out`."""

    tmp: Path
    good: dict

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def data_copy(self, name: str, edit: Callable[[h5py.File], None]) -> Path:
        path = self.tmp / name
        shutil.copy(self.good["data"], path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    def train(self, model: dict | None = None, data: dict | None = None, checkpoints: Path | None = None) -> list[str]:
        """`fit --config` of the tiny experiment, writing into `out`, with parts of it replaced."""
        config = fit_runs.tiny_config(self.out, self.good["data"], max_epochs=1)
        config["model"].update(model or {})
        config["data"].update(data or {})
        if checkpoints is not None:
            config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(checkpoints)
        return ["fit", "--config", str(fit_runs.write_config(self.tmp / "experiment.yaml", config))]

    def mei(self, checkpoint: Path | None = None, *args: str) -> list[str]:
        neurons = ["--neurons", "twin0/twin0-n000"] if "--neurons" not in args and "--top-k" not in args else []
        return ["mei", str(checkpoint or self.good["checkpoint"]), *neurons, "--steps", "2", "--out", str(self.out), *args]

    def checkpoint(self, name: str, content: object | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        return path


def _text_file(i: Inputs, name: str, text: str) -> Path:
    (i.tmp / name).write_text(text)
    return i.tmp / name


def _drop_responses(f: h5py.File) -> None:
    del f["sessions/twin0/responses"]


def _short_responses(f: h5py.File) -> None:
    values = f["sessions/twin1/responses"][()]
    del f["sessions/twin1/responses"]
    f["sessions/twin1"].create_dataset("responses", data=values[:-2])


def _truncated(i: Inputs) -> Path:
    data = i.good["checkpoint"].read_bytes()
    return i.checkpoint("cut.ckpt", data[: len(data) // 2])


def _pickled(i: Inputs) -> Path:
    checkpoint = torch.load(i.good["checkpoint"], map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["note"] = Payload(i.tmp / MARKER)
    return i.checkpoint("evil.ckpt", checkpoint)


def _poisoned_last(i: Inputs) -> list[str]:
    """A checkpoint folder whose last.ckpt holds a pickled object, for `--ckpt_path last`."""
    folder = i.tmp / "checkpoints"
    folder.mkdir()
    _pickled(i).rename(folder / "last.ckpt")
    return [*i.train(checkpoints=folder), "--ckpt_path", "last"]


def _corrupt_prior(i: Inputs) -> Path:
    prior = i.tmp / "broken_prior"
    shutil.copytree(SHIPPED_PRIOR, prior)
    weights = prior / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return prior


# (id, program, argv builder, fragments the one error line must contain)
CASES: list[tuple[str, str, Callable[[Inputs], list[str]], list[str]]] = [
    # dataset files
    ("data_missing", "train", lambda i: i.train(data={"path": str(i.tmp / "missing.h5")}), ["missing.h5", "file not found"]),
    ("data_not_hdf5", "train", lambda i: i.train(data={"path": str(_text_file(i, "notes.h5", "hello"))}),
     ["notes.h5", "not a readable HDF5 file"]),
    ("data_missing_field", "encoders", lambda i: i.mei(None, "--top-k", "2", "--data", str(i.data_copy("nofield.h5", _drop_responses))),
     ["nofield.h5", "session 'twin0'", "field 'responses'", "missing field"]),
    ("data_wrong_shape", "encoders",
     lambda i: ["reconstruct", str(i.good["checkpoint"]), "--data", str(i.data_copy("short.h5", _short_responses)),
                "--session", "twin1", "--steps", "2", "--out", str(i.out)],
     ["short.h5", "session 'twin1'", "field 'responses'", "has 118 images but images has 120"]),
    ("data_unknown_session", "train", lambda i: i.train(data={"sessions": ["twin0", "nope"]}),
     ["twin.h5", "field 'sessions'", "unknown session(s) ['nope']"]),
    # configs
    ("train_unknown_key", "train", lambda i: i.train(model={"learning_rate": 0.1}), ["learning_rate"]),
    ("prepare_unknown_key", "encoders",
     lambda i: ["prepare", "synthetic", str(i.out), "--config", str(_text_file(i, "twin.yaml", "sessions: 2\nneurones: 5\n"))],
     ["twin.yaml", "unknown key(s) ['neurones']"]),
    ("core_misspelt_option", "train", lambda i: i.train(model={"core": {"type": "stacked", "hiden_channels": 4}}),
     ["core: unknown argument(s) ['hiden_channels'] for core type 'stacked'", "hidden_channels"]),
    ("readout_misspelt_type", "train", lambda i: i.train(model={"readout": {"type": "atention"}}),
     ["readout.type must be one of ['attention', 'gaussian']", "'atention'"]),
    ("train_ill_typed_option", "train", lambda i: [*i.train(), "--trainer.max_epochs=many"], ['Parser key "trainer.max_epochs"']),
    # checkpoints, for products and for resuming
    ("checkpoint_missing", "encoders", lambda i: i.mei(i.tmp / "missing.ckpt"), ["missing.ckpt", "checkpoint not found"]),
    ("checkpoint_truncated", "encoders", lambda i: i.mei(_truncated(i)), ["cut.ckpt", "not a readable encoders checkpoint"]),
    ("checkpoint_not_a_checkpoint", "encoders", lambda i: i.mei(i.checkpoint("tensor.ckpt", torch.zeros(3))),
     ["tensor.ckpt", "not a model checkpoint"]),
    ("checkpoint_pickled_object", "encoders", lambda i: i.mei(_pickled(i)), ["evil.ckpt", "refused", "pickled Python object"]),
    ("resume_pickled_object", "train", lambda i: [*i.train(), "--ckpt_path", str(_pickled(i))],
     ["evil.ckpt", "refused", "pickled Python object"]),
    ("resume_last_pickled_object", "train", _poisoned_last, ["checkpoints/last.ckpt", "refused", "pickled Python object"]),
    ("resume_truncated", "train", lambda i: [*i.train(), "--ckpt_path", str(_truncated(i))],
     ["cut.ckpt", "not a readable encoders checkpoint"]),
    # neuron ids
    ("neuron_unknown_session", "encoders", lambda i: i.mei(None, "--neurons", "nope/twin0-n000"),
     ["unknown session 'nope'", "twin0, twin1"]),
    ("neuron_unknown_id", "encoders", lambda i: i.mei(None, "--neurons", "twin0/twin0-n999"),
     ["unknown neuron id 'twin0-n999' in session 'twin0'", "twin0-n000"]),
    # diffusion priors
    ("prior_missing", "encoders", lambda i: i.mei(None, "--method", "egg", "--prior", str(i.tmp / "no_prior")),
     ["no_prior", "diffusion prior folder not found"]),
    ("prior_corrupt_weights", "encoders", lambda i: i.mei(None, "--method", "egg", "--prior", str(_corrupt_prior(i))),
     ["broken_prior", "diffusion_pytorch_model.safetensors", "not a readable UNet2DModel"]),
    # command-line values
    ("argument_not_a_number", "encoders", lambda i: i.mei(None, "--steps", "ten"), ["argument --steps", "invalid int value: 'ten'"]),
    ("argument_not_a_choice", "encoders", lambda i: i.mei(None, "--optimizer", "adam"), ["argument --optimizer", "invalid choice: 'adam'"]),
    ("argument_out_of_range", "encoders", lambda i: i.mei(None, "--lr", "-1"), ["lr > 0", "lr=-1.0"]),
    ("argument_of_another_method", "encoders", lambda i: i.mei(None, "--prior", str(SHIPPED_PRIOR)), ["--prior", "only apply to --method egg"]),
]


def _run(program: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run in this process (a subprocess per case would cost seconds of imports); exit code and stderr."""
    capsys.readouterr()
    try:
        code = encoders_main(argv) if program == "encoders" else (fit_runs.train_in_process(argv), 0)[1]
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("program, build, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error_and_no_output(good, tmp_path, capsys, program, build, fragments):
    inputs = Inputs(tmp_path, good)
    code, stderr = _run(program, build(inputs), capsys)
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not inputs.out.exists(), "a failed command left output behind"
    assert not (tmp_path / MARKER).exists(), "a pickled payload was executed"


def test_numbers_of_kinds():
    """The catalogue covers at least 12 kinds of bad input, from every family named in the issue."""
    families = {case[0].split("_")[0] for case in CASES}
    assert len(CASES) >= 12 and {"data", "train", "prepare", "core", "readout", "checkpoint", "resume", "neuron", "prior",
                                 "argument"} <= families


@pytest.mark.parametrize("program", ["train", "encoders"])
def test_user_errors_exit_cleanly_as_real_processes(good, tmp_path, program):
    """The same, end to end in a fresh process: status 2, one line on stderr, no traceback."""
    inputs = Inputs(tmp_path, good)
    if program == "train":
        command = [sys.executable, "train.py", *inputs.train(data={"path": str(tmp_path / "missing.h5")})]
        fragments = ["train.py: error:", "missing.h5: file not found"]
    else:
        command = [sys.executable, "-m", "encoders.cli", *inputs.mei(_pickled(inputs))]
        fragments = ["encoders: error:", "evil.ckpt: refused"]
    result = subprocess.run(command, cwd=fit_runs.ROOT, env=fit_runs.environment(), capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert all(f in errors[0] for f in fragments), errors[0]
    assert not inputs.out.exists() and not (tmp_path / MARKER).exists()


def test_keyword_passthroughs_reject_misspelt_arguments():
    """ModelCheckpoint and EGGSynthesis.load forward keyword arguments: a typo must fail, not vanish."""
    from encoders.training import ModelCheckpoint
    from encoders.synthesis.methods import EGGSynthesis

    with pytest.raises(TypeError, match="dirpth"):
        ModelCheckpoint(dirpth="runs/x")
    with pytest.raises(TypeError, match="energy_scal"):
        EGGSynthesis.load(str(SHIPPED_PRIOR), energy_scal=2.0)
