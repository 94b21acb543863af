"""A catalogue of bad inputs across the user surface (train.py and the `encoders` command): each gives
ONE line on stderr naming what is wrong and where (file, field, key or argument), exits with status 2,
prints no Python traceback, and writes nothing (no output, no config.yaml, no checkpoint, no product).

Kinds: dataset files (missing, not HDF5, missing field, wrong shape, unknown session), configs
(unknown YAML key for train.py, for `encoders prepare synthetic --config` and for `encoders prior
train --config`, misspelt core option, misspelt readout type, ill-typed option), values out of range
in configs and flags (batch size, resize, learning rate, core layers, accelerator, devices),
checkpoints (missing, truncated, not a checkpoint, a pickled object, for products and for resuming a
fit by path or with `--ckpt_path last`; used with a data file of other neurons or images), neuron ids
(unknown session, unknown id), diffusion priors (missing folder, from a flag or a config; corrupt
weights), output folders (an existing file) and command-line values (not a number, not a choice,
out of range, a flag of another method, two ways of choosing neurons).
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
import yaml

import fit_runs
from encoders.cli import main as encoders_main
from encoders.twin import write_twin

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
    return fit_runs.fit_tiny(tmp_path_factory.mktemp("good"))


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

    def train(self, model: dict | None = None, data: dict | None = None, checkpoints: Path | None = None,
              trainer: dict | None = None) -> list[str]:
        """`fit --config` of the tiny experiment, writing into `out`, with parts of it replaced."""
        config = fit_runs.tiny_config(self.out, self.good["data"], max_epochs=1)
        config["model"].update(model or {})
        config["data"].update(data or {})
        config["trainer"].update(trainer or {})
        if checkpoints is not None:
            config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(checkpoints)
        return ["fit", "--config", str(fit_runs.write_config(self.tmp / "experiment.yaml", config))]

    def mei(self, checkpoint: Path | None = None, *args: str) -> list[str]:
        neurons = ["--neurons", "[twin0/twin0-n000]"] if "--neurons" not in args and "--top_k" not in args else []
        steps = ["--method.steps", "2"] if not any(a.startswith(("--method", "--config")) for a in args) else []
        return ["mei", str(checkpoint or self.good["checkpoint"]), *neurons, *steps, "--out", str(self.out), *args]

    def vei(self, *args: str) -> list[str]:
        neurons = ["--neurons", "[twin0/twin0-n000]"] if "--neurons" not in args else []
        return ["vei", str(self.good["checkpoint"]), *neurons, "--method.steps", "2", "--k", "2", "--out", str(self.out), *args]

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


def _other_neuron_ids(f: h5py.File) -> None:
    """The same images and responses, but session twin0's neurons are other ones (other ids)."""
    ids = f["sessions/twin0/neuron_id"]
    ids[...] = [b"other-" + bytes(x) for x in ids[()]]


def _other_image_size(i: Inputs) -> Path:
    """A twin with the same sessions and neuron ids as the checkpoint's, but 24 px images (it was trained on 16)."""
    path = i.tmp / "big.h5"
    write_twin(path, n_sessions=2, neurons_per_session=5, images_per_session=40, image_size=24, seed=0,
               validation_fraction=0.2, test_fraction=0.2, test_repeats=2)
    return path


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


def _egg(prior: Path | str, **settings: object) -> str:
    """An `--method` value choosing energy-guided diffusion with this prior."""
    init_args = {"prior": str(prior), "num_steps": 2, **settings}
    return yaml.safe_dump({"class_path": "encoders.synthesis.EGGSettings", "init_args": init_args}, default_flow_style=True)


def _mei_config(i: Inputs) -> Path:
    """A MENI config (`encoders mei --config`) whose EGG prior folder does not exist."""
    config = {"kind": "meni", "method": {"class_path": "encoders.synthesis.EGGSettings",
                                         "init_args": {"prior": str(i.tmp / "no_prior"), "num_steps": 2, "contrast": None}}}
    return _text_file(i, "meni.yaml", yaml.safe_dump(config))


def _out_file(i: Inputs) -> list[str]:
    i.out.write_text("results of another run\n")
    return i.mei()


GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="asking for a GPU is an error only where there is none")

# (id, program, argv builder, fragments the one error line must contain[, marks])
CASES: list[tuple] = [
    # dataset files
    ("data_missing", "train", lambda i: i.train(data={"path": str(i.tmp / "missing.h5")}), ["missing.h5", "file not found"]),
    ("data_not_hdf5", "train", lambda i: i.train(data={"path": str(_text_file(i, "notes.h5", "hello"))}),
     ["notes.h5", "not a readable HDF5 file"]),
    ("data_missing_field", "encoders", lambda i: i.mei(None, "--top_k", "2", "--data", str(i.data_copy("nofield.h5", _drop_responses))),
     ["nofield.h5", "session 'twin0'", "field 'responses'", "missing field"]),
    ("data_wrong_shape", "encoders",
     lambda i: ["reconstruct", str(i.good["checkpoint"]), "--data", str(i.data_copy("short.h5", _short_responses)),
                "--sessions", "[twin1]", "--method.steps", "2", "--out", str(i.out)],
     ["short.h5", "session 'twin1'", "field 'responses'", "has 118 images but images has 120"]),
    ("data_unknown_session", "train", lambda i: i.train(data={"sessions": ["twin0", "nope"]}),
     ["twin.h5", "field 'sessions'", "unknown session(s) ['nope']"]),
    # configs
    ("train_unknown_key", "train", lambda i: i.train(model={"learning_rate": 0.1}), ["learning_rate"]),
    ("prepare_unknown_key", "encoders",
     lambda i: ["prepare", "synthetic", str(i.out), "--config", str(_text_file(i, "twin.yaml", "n_sessions: 2\nneurones: 5\n"))],
     ["twin.yaml", "unknown key(s) ['neurones']", "neurons_per_session"]),
    ("prior_train_unknown_key", "encoders",
     lambda i: ["prior", "train", "--config", str(_text_file(i, "prior.yaml", f"out: {i.out}\nseeed: 3\n"))],
     ["prior.yaml", "unknown key(s) ['seeed']", "'seed'"]),
    ("prior_train_unknown_nested_key", "encoders",
     lambda i: ["prior", "train", "--config", str(_text_file(i, "prior.yaml", f"out: {i.out}\ndata:\n  sise: 32\n"))],
     ["prior.yaml", "unknown key(s) ['data.sise']", "'data.size'"]),
    ("core_misspelt_option", "train", lambda i: i.train(model={"core": {"type": "stacked", "hiden_channels": 4}}),
     ["core: unknown argument(s) ['hiden_channels'] for core type 'stacked'", "hidden_channels"]),
    ("readout_misspelt_type", "train", lambda i: i.train(model={"readout": {"type": "atention"}}),
     ["readout.type must be one of ['attention', 'gaussian']", "'atention'"]),
    ("train_ill_typed_option", "train", lambda i: [*i.train(), "--trainer.max_epochs=many"], ['Parser key "trainer.max_epochs"', "many"]),
    # values out of range, in configs and flags
    ("data_batch_size_zero", "train", lambda i: i.train(data={"batch_size": 0}), ["data.batch_size", "positive integer", "got 0"]),
    ("data_batch_size_negative", "train", lambda i: [*i.train(), "--data.batch_size", "-4"], ["data.batch_size", "got -4"]),
    ("data_resize_zero", "train", lambda i: i.train(data={"resize": [0, 16]}), ["data.resize", "positive sizes", "[0, 16]"]),
    ("data_resize_negative", "train", lambda i: [*i.train(), "--data.resize", "[16, -2]"], ["data.resize", "[16, -2]"]),
    ("model_lr_zero", "train", lambda i: [*i.train(), "--model.lr", "0"], ["model.lr", "positive finite", "got 0"]),
    ("model_lr_negative", "train", lambda i: i.train(model={"lr": -0.01}), ["model.lr", "got -0.01"]),
    ("model_lr_nan", "train", lambda i: i.train(model={"lr": float("nan")}), ["model.lr", "got nan"]),
    ("core_layers_zero", "train", lambda i: i.train(model={"core": {"type": "stacked", "hidden_channels": 4, "layers": 0}}),
     ["core: layers must be a positive integer, got 0"]),
    ("trainer_accelerator_gpu", "train", lambda i: [*i.train(), "--trainer.accelerator", "gpu"],
     ["trainer.accelerator", "'gpu'", "no CUDA device"], [GPU]),
    ("trainer_devices_zero", "train", lambda i: i.train(trainer={"devices": 0}), ["trainer.devices", "got 0"]),
    # checkpoints, for products and for resuming
    ("checkpoint_missing", "encoders", lambda i: i.mei(i.tmp / "missing.ckpt"), ["missing.ckpt", "checkpoint not found"]),
    ("checkpoint_truncated", "encoders", lambda i: i.mei(_truncated(i)), ["cut.ckpt", "not a readable encoders checkpoint"]),
    ("checkpoint_not_a_checkpoint", "encoders", lambda i: i.mei(i.checkpoint("tensor.ckpt", torch.zeros(3))),
     ["tensor.ckpt", "not a model checkpoint"]),
    ("checkpoint_pickled_object", "encoders", lambda i: i.mei(_pickled(i)), ["evil.ckpt", "refused", "pickled Python object"]),
    ("checkpoint_other_neurons", "encoders", lambda i: i.mei(None, "--data", str(i.data_copy("other.h5", _other_neuron_ids))),
     ["other.h5", "session 'twin0'", "other ids than the checkpoint's"]),
    ("checkpoint_other_image_size", "encoders", lambda i: i.mei(None, "--data", str(_other_image_size(i))),
     ["big.h5", "(1, 24, 24)", "the checkpoint takes (1, 16, 16)"]),
    ("resume_pickled_object", "train", lambda i: [*i.train(), "--ckpt_path", str(_pickled(i))],
     ["evil.ckpt", "refused", "pickled Python object"]),
    ("resume_last_pickled_object", "train", _poisoned_last, ["checkpoints/last.ckpt", "refused", "pickled Python object"]),
    ("resume_truncated", "train", lambda i: [*i.train(), "--ckpt_path", str(_truncated(i))],
     ["cut.ckpt", "not a readable encoders checkpoint"]),
    # neuron ids
    ("neuron_unknown_session", "encoders", lambda i: i.mei(None, "--neurons", "[nope/twin0-n000]"),
     ["unknown session 'nope'", "twin0, twin1"]),
    ("neuron_unknown_id", "encoders", lambda i: i.mei(None, "--neurons", "[twin0/twin0-n999]"),
     ["unknown neuron id 'twin0-n999' in session 'twin0'", "twin0-n000"]),
    ("neuron_list_and_top_k", "encoders", lambda i: i.mei(None, "--neurons", "[twin0/twin0-n000]", "--top_k", "2"),
     ["neurons", "top_k", "not both"]),
    ("neuron_top_k_without_data", "encoders", lambda i: i.mei(None, "--top_k", "2"), ["top_k needs data", "--data"]),
    ("reconstruct_unknown_session", "encoders",
     lambda i: ["reconstruct", str(i.good["checkpoint"]), "--data", str(i.good["data"]), "--sessions", "[nope]",
                "--method.steps", "2", "--out", str(i.out)],
     ["unknown session 'nope'", "twin0, twin1"]),
    # diffusion priors
    ("prior_missing", "encoders", lambda i: i.mei(None, "--method", _egg(i.tmp / "no_prior")),
     ["no_prior", "diffusion prior folder not found"]),
    ("prior_missing_in_config", "encoders", lambda i: i.mei(None, "--config", str(_mei_config(i))),
     ["no_prior", "diffusion prior folder not found"]),
    ("prior_corrupt_weights", "encoders", lambda i: i.mei(None, "--method", _egg(_corrupt_prior(i))),
     ["broken_prior", "diffusion_pytorch_model.safetensors", "not a readable UNet2DModel"]),
    # output folders
    ("out_is_a_file", "encoders", _out_file, ["--out", "out", "exists and is not a folder"]),
    # command-line values
    ("argument_not_a_number", "encoders", lambda i: i.mei(None, "--method.steps", "ten"), ['"steps"', "int", "ten"]),
    ("argument_not_a_choice", "encoders", lambda i: i.mei(None, "--method.optimizer", "adam"),
     ["optimizer must be one of ['sgd', 'adamw']", "'adam'"]),
    ("argument_out_of_range", "encoders", lambda i: i.mei(None, "--method.lr", "-1"), ["lr > 0", "lr=-1.0"]),
    ("argument_of_another_method", "encoders",
     lambda i: i.mei(None, "--method", _egg(SHIPPED_PRIOR), "--method.steps", "2"),
     ["--method.steps: not an option of EGGSettings", "num_steps"]),
    ("argument_of_two_methods", "encoders", lambda i: i.mei(None, "--method.prior", str(SHIPPED_PRIOR), "--method.steps", "2"),
     ["--method.prior: not an option of GASettings", "'steps'"]),
    ("argument_unknown_kind", "encoders", lambda i: i.mei(None, "--kind", "mni"), ["kind", "'mni'", "'meni'"]),
    ("method_base_class", "encoders", lambda i: i.mei(None, "--method", "{class_path: encoders.synthesis.Method}"),
     ["method: Method is the interface", "GASettings"]),
    ("preset_setting_it_fixes", "encoders", lambda i: i.mei(None, "--method", "GARebuttal", "--method.steps", "5"),
     ["--method.steps: not an option of GARebuttal", "'seeds'"]),
    ("renamed_preset", "encoders", lambda i: i.mei(None, "--method", "EGGPaper"),
     ["EGGPaper was the paper's settings", "EGGSubmission", "EGGRebuttal"]),
    ("lr_pixels_with_adam", "encoders", lambda i: i.mei(None, "--method", "GASettings", "--method.optimizer", "adamw",
                                                        "--method.lr_pixels", "10000"),
     ["method.lr_pixels: a positive pixel count, and only for SGD on the raw gradient"]),
    ("egg_keep", "encoders", lambda i: i.mei(None, "--method", "{class_path: EGGSettings, init_args: {prior: p, keep: last}}"),
     ["keep"]),
    # varied exciting images
    ("vei_floor_zero", "encoders", lambda i: i.vei("--floor", "0"), ["floor must be in (0, 1]", "got 0.0"]),
    ("vei_floor_above_one", "encoders", lambda i: i.vei("--floor", "1.2"), ["floor must be in (0, 1]", "got 1.2"]),
    ("vei_one_image", "encoders", lambda i: i.vei("--k", "1"), ["k must be an integer >= 2", "got 1"]),
    ("vei_unknown_neuron", "encoders", lambda i: i.vei("--neurons", "[twin0/twin0-n999]"), ["unknown neuron id 'twin0-n999'"]),
    ("vei_floor_unreachable", "encoders",  # two steps of lr 1e-4 from noise cannot reach a 30-step MEI (0.991 of it)
     lambda i: i.vei("--floor", "1", "--method.lr", "0.0001", "--reference", "{class_path: GASettings, init_args: {steps: 30, lr: 0.05}}"),
     ["floor: no neuron's MEI by GASettings reaches 1.0", "twin0/twin0-n000"]),
    ("manifold_latent_dim", "encoders", lambda i: ["manifold", str(i.good["checkpoint"]), "--neurons", "[twin0/twin0-n000]",
                                                   "--latent_dim", "3", "--out", str(i.out)], ["latent_dim must be 1 (a loop) or 2", "got 3"]),
    ("manifold_unknown_neuron", "encoders", lambda i: ["manifold", str(i.good["checkpoint"]), "--neurons", "[twin0/nope]",
                                                       "--out", str(i.out)], ["unknown neuron id 'nope'"]),
    ("vei_prior_contrast", "encoders", lambda i: i.vei("--method", f"{{class_path: EGGSettings, init_args: {{prior: {SHIPPED_PRIOR}, contrast: null}}}}"),
     ["method must keep one contrast"]),
]


# ---- round two: config files, trainer values, devices, output folders, prior training, values that mean nothing
def _with_line(i: Inputs, argv: list[str], line: str) -> list[str]:
    """The tiny experiment's YAML with one more line at its end (e.g. a key it already has)."""
    path = Path(argv[2])
    path.write_text(path.read_text() + line)
    return argv


def _test_other_architecture(i: Inputs) -> list[str]:
    argv = i.train(model={"readout": {"type": "gaussian"}})
    return ["test", *argv[1:], "--ckpt_path", str(i.good["checkpoint"])]


def _test_without_checkpoint(i: Inputs) -> list[str]:
    return ["test", *i.train()[1:]]  # the config's checkpoint folder (under out) holds nothing


def _prior(i: Inputs, data: dict | None = None, model: dict | None = None, optimisation: dict | None = None,
           out: Path | None = None, plant: object | None = None) -> list[str]:
    """`encoders prior train` of a tiny UNet on the good twin's images, with parts replaced; `plant` is put
    where a resumable checkpoint of the run would be (bytes as they are, anything else through torch.save)."""
    config = {
        "data": {"size": 16, "source_size": 16, "batch_size": 4, "datasets": [{"path": str(i.good["data"])}], **(data or {})},
        "model": {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention": False, **(model or {})},
        "optimisation": {"max_steps": 4, "checkpoint_every": 2, "warmup_steps": 1, "sample_steps": 2, **(optimisation or {})},
    }
    out = out or i.out
    if plant is not None:
        (out / "checkpoints").mkdir(parents=True)
        last = out / "checkpoints" / "last.ckpt"
        last.write_bytes(plant) if isinstance(plant, bytes) else torch.save(plant, last)
    return ["prior", "train", "--config", str(_text_file(i, "prior.yaml", yaml.safe_dump(config))), "--out", str(out)]


def _nan_target(i: Inputs) -> Path:
    import numpy as np
    import xarray as xr

    values = np.random.default_rng(0).normal(size=(20, 4))
    values[3, 1] = np.nan
    xr.Dataset({"responses": (("stimulus", "unit"), values)}).to_netcdf(i.tmp / "target.nc", engine="h5netcdf")
    return i.tmp / "target.nc"


def _compare(i: Inputs, architecture: dict | None = None, text: str | None = None, device: str = "cpu") -> list[str]:
    """`encoders compare` of one tiny architecture on the good twin, with parts replaced (or the YAML's text)."""
    model = architecture or {"core": {"type": "stacked", "hidden_channels": 4, "layers": 1}, "readout": {"type": "gaussian"}}
    config = {"out": str(i.out), "device": device, "data": {"path": str(i.good["data"]), "batch_size": 16},
              "architectures": {"small": {"model": model}}, "seeds": {"generating": [0]}, "trainer": {"max_epochs": 1},
              "methods": {"ga": {"class_path": "encoders.synthesis.GASettings", "init_args": {"steps": 2}}}}
    return ["compare", str(_text_file(i, "compare.yaml", text if text is not None else yaml.safe_dump(config)))]


def _products_same_file(i: Inputs) -> list[str]:
    argv = i.train()
    config = yaml.safe_load(Path(argv[2]).read_text())
    mei = {"class_path": "encoders.products.MEIs", "init_args": {"top_k": 2, "method": {"steps": 2}}}
    config["trainer"]["callbacks"].append({"class_path": "encoders.callbacks.Products", "init_args": {"products": [mei, mei]}})
    Path(argv[2]).write_text(yaml.safe_dump(config))
    return argv


def _cowley_source(i: Inputs, damage: str) -> list[str]:
    """A 3-image release in the Cowley layout, damaged in one way, for `encoders prepare cowley2023`."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    root = i.tmp / "release"
    (root / "images").mkdir(parents=True)
    (root / "responses_repeat_averaged").mkdir()
    jpegs = {}
    for n in (1, 2, 3):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * n, dtype=np.uint8)).save(buffer, format="JPEG")
        jpegs[f"image{n:04d}.jpg"] = buffer.getvalue()
    if damage == "truncated_image":
        jpegs["image0002.jpg"] = jpegs["image0002.jpg"][:40]
    if damage == "not_an_image":
        jpegs["image0003.jpg"] = b"GIF89a this is no JPEG"
    archive = root / "images" / "images_s1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in jpegs.items():
            z.writestr(name, data)
    if damage == "damaged_zip":
        archive.write_bytes(archive.read_bytes()[:-60])
    responses = root / "responses_repeat_averaged" / "responses_s1.npy"
    np.save(responses, np.ones((2, 3)))
    if damage == "responses_not_numpy":
        responses.write_text("neuron,image,count\n0,1,3\n")
    return ["prepare", "cowley2023", str(root), str(i.out / "v4.h5")]


CASES += [
    # corrupt source files inside a converter's input
    ("prepare_damaged_zip", "encoders", lambda i: _cowley_source(i, "damaged_zip"), ["images_s1.zip", "not a readable zip"]),
    ("prepare_truncated_image", "encoders", lambda i: _cowley_source(i, "truncated_image"), ["image0002.jpg"]),
    ("prepare_not_an_image", "encoders", lambda i: _cowley_source(i, "not_an_image"), ["image0003.jpg"]),
    ("prepare_responses_not_numpy", "encoders", lambda i: _cowley_source(i, "responses_not_numpy"),
     ["responses_s1.npy", "not a readable .npy array"]),
    # config files that are not YAML, or repeat a key (the last one silently won)
    ("config_duplicate_key", "train", lambda i: _with_line(i, i.train(), "seed_everything: 5\n"),
     ["experiment.yaml", "key 'seed_everything' given twice"]),
    ("config_duplicate_nested_key", "encoders",
     lambda i: ["prepare", "synthetic", str(i.out), "--config", str(_text_file(i, "twin.yaml", "n_sessions: 2\nn_sessions: 3\n"))],
     ["twin.yaml", "key 'n_sessions' given twice (lines 1 and 2)"]),
    ("config_not_text", "train", lambda i: ["fit", "--config", str(i.checkpoint("binary.yaml", b"\x00\x01\x02 not text"))],
     ["binary.yaml", "not a readable YAML file"]),
    # trainer values Lightning rejects itself
    ("trainer_max_epochs_negative", "train", lambda i: [*i.train(), "--trainer.max_epochs", "-5"], ["trainer:", "max_epochs", "-5"]),
    ("trainer_max_time_malformed", "train", lambda i: i.train(trainer={"max_time": "soon"}), ["trainer:", "'soon'", "DD:HH:MM:SS"]),
    ("trainer_seed_out_of_range", "train", lambda i: [*i.train(), "--seed_everything", str(2**40)], ["seed_everything", str(2**40)]),
    # results that would be swapped or overwritten silently
    ("test_checkpoint_of_another_architecture", "train", _test_other_architecture,
     ["last.ckpt", "model.readout", "'attention'", "the config's is {'type': 'gaussian'}"]),
    ("test_without_checkpoint", "train", _test_without_checkpoint, ["test: --ckpt_path is needed", "no trained checkpoint"]),
    # devices and output folders
    ("device_cuda_missing", "encoders", lambda i: i.mei(None, "--device", "cuda"), ["--device", "'cuda'", "no CUDA device"], [GPU]),
    ("device_not_a_device", "encoders", lambda i: i.mei(None, "--device", "gpu0"), ["--device", "'gpu0'", "not a torch device"]),
    ("out_not_writable", "encoders", lambda i: [*i.mei()[:-2], "--out", "/proc/encoders-out"],
     ["/proc/encoders-out", "cannot be written"]),
    ("out_not_writable_prior", "encoders", lambda i: _prior(i, out=Path("/proc/encoders-prior")),
     ["/proc/encoders-prior", "cannot be written"]),
    # a model that cannot see the images
    ("core_larger_than_input", "train", lambda i: i.train(data={"resize": [3, 3]}),
     ["data: images of (1, 3, 3)", "do not fit the core", "Kernel size"]),
    # values that run but mean nothing
    ("mei_zero_steps", "encoders", lambda i: i.mei(None, "--method.steps", "0"), ["need steps >= 1"]),
    ("similarity_nan_target", "encoders",
     lambda i: ["similarity", "optimize", "--target", str(_nan_target(i)), "--out", str(i.out), "--steps", "2"],
     ["target.nc", "1 NaN or infinite value(s)"]),
    ("similarity_zero_steps", "encoders",
     lambda i: ["similarity", "optimize", "--synthetic-target", "--out", str(i.out), "--steps", "0"], ["--steps", "steps >= 1"]),
    # prior training: resuming only its own checkpoint, never unpickling; values out of range; test images
    ("prior_resume_pickled_object", "encoders", lambda i: _prior(i, plant={"state_dict": {}, "note": Payload(i.tmp / MARKER)}),
     ["checkpoints/last.ckpt", "refused", "pickled Python object"]),
    ("prior_resume_encoder_checkpoint", "encoders",
     lambda i: _prior(i, plant=torch.load(i.good["checkpoint"], map_location="cpu", weights_only=True)),
     ["checkpoints/last.ckpt", "not a checkpoint of `encoders prior train`"]),
    ("prior_resume_empty_file", "encoders", lambda i: _prior(i, plant=b""), ["checkpoints/last.ckpt", "not a readable"]),
    ("prior_zero_timesteps", "encoders", lambda i: _prior(i, model={"num_train_timesteps": 0}), ["model.num_train_timesteps", "at least 2"]),
    ("prior_beta_schedule_misspelt", "encoders", lambda i: _prior(i, model={"beta_schedule": "cosine"}),
     ["model.beta_schedule", "'cosine'", "squaredcos_cap_v2"]),
    ("prior_zero_steps", "encoders", lambda i: _prior(i, optimisation={"max_steps": 0}), ["max_steps", "at least 1"]),
    ("prior_checkpoint_every_zero", "encoders", lambda i: _prior(i, optimisation={"checkpoint_every": 0}), ["checkpoint_every", "at least 1"]),
    ("prior_ema_negative", "encoders", lambda i: _prior(i, optimisation={"ema_decay": -0.5}), ["optimisation.ema_decay", "-0.5"]),
    ("products_same_file", "train", _products_same_file, ["two products would write the same file", "mei_ga"]),
    # compare: every check before anything trains or is written
    ("compare_invalid_architecture", "encoders",
     lambda i: _compare(i, {"core": {"type": "stacked", "layers": 0}, "readout": {"type": "gaussian"}}),
     ["compare.yaml", "architectures.small.model", "layers must be a positive integer, got 0"]),
    ("compare_duplicate_method", "encoders",
     lambda i: _compare(i, text=Path(_compare(i)[1]).read_text() + "methods: {ga: {class_path: encoders.synthesis.GARebuttal}}\n"),
     ["compare.yaml", "key 'methods' given twice"]),
    ("compare_device_missing", "encoders", lambda i: _compare(i, device="cuda"), ["compare.yaml: device", "no CUDA device"], [GPU]),
    ("prior_test_tier", "encoders",
     lambda i: _prior(i, data={"datasets": [{"path": str(i.good["data"]), "tiers": ["train", "test"]}]}),
     ["test-tier images", "allow_test: true"]),
]


def _run(program: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run in this process (a subprocess per case would cost seconds of imports); exit code and stderr."""
    capsys.readouterr()
    try:
        code = encoders_main(argv) if program == "encoders" else fit_runs.train_in_process(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _files(*folders: Path) -> dict[Path, tuple[int, int]]:
    """Every file and folder under `folders`, with size and modification time: what a run may not change."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in sorted(folder.rglob("*"))}


def assert_one_clean_error(code: int, stderr: str, fragments: list[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]  # one line: no usage text, no log lines, no warnings
    assert lines[0].startswith(("train: error: ", "encoders: error: ")), lines[0]
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _params():
    return [pytest.param(*case[1:4], id=case[0], marks=case[4] if len(case) > 4 else ()) for case in CASES]


@pytest.mark.parametrize("program, build, fragments", _params())
def test_bad_input_gives_one_clear_error_and_no_output(good, tmp_path, capsys, program, build, fragments):
    inputs = Inputs(tmp_path, good)
    argv = build(inputs)
    before = _files(tmp_path, good["folder"])
    code, stderr = _run(program, argv, capsys)
    assert_one_clean_error(code, stderr, fragments)
    assert _files(tmp_path, good["folder"]) == before, "a failed command wrote or changed files"
    assert not (tmp_path / MARKER).exists(), "a pickled payload was executed"


def test_numbers_of_kinds():
    """The catalogue covers at least 40 kinds of bad input, from every family named in the issue."""
    families = {case[0].split("_")[0] for case in CASES}
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES)
    assert {"data", "train", "prepare", "prior", "core", "readout", "model", "trainer", "checkpoint", "resume", "neuron",
            "reconstruct", "out", "argument"} <= families


@pytest.mark.parametrize("program", ["train", "encoders"])
def test_user_errors_exit_cleanly_as_real_processes(good, tmp_path, program):
    """The same, end to end in a fresh process: status 2, one line on stderr (Lightning's start-up lines
    are held back until a run is set up), no traceback, nothing written."""
    inputs = Inputs(tmp_path, good)
    if program == "train":
        command = [sys.executable, "train.py", *inputs.train(data={"path": str(tmp_path / "missing.h5")})]
        fragments = ["train: error:", "missing.h5: file not found"]
    else:
        command = [sys.executable, "-m", "encoders.cli", *inputs.mei(_pickled(inputs))]
        fragments = ["encoders: error:", "evil.ckpt: refused"]
    before = _files(tmp_path)
    result = subprocess.run(command, cwd=fit_runs.ROOT, env=fit_runs.environment(), capture_output=True, text=True, timeout=120)
    assert_one_clean_error(result.returncode, result.stderr, fragments)
    assert _files(tmp_path) == before and not (tmp_path / MARKER).exists()


def test_keyword_passthroughs_reject_misspelt_arguments():
    """ModelCheckpoint forwards keyword arguments and EGG settings are typed: a typo must fail, not vanish."""
    from encoders.synthesis import EGGSettings
    from encoders.training import ModelCheckpoint

    with pytest.raises(TypeError, match="dirpth"):
        ModelCheckpoint(dirpth="runs/x")
    with pytest.raises(TypeError, match="energy_scal"):
        EGGSettings(prior=str(SHIPPED_PRIOR), energy_scal=2.0)
