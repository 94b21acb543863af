"""The `encoders compare` spec: train.py's data/model/trainer blocks and the products' method blocks, read by
jsonargparse and checked whole before anything trains or is written. Every error is one line naming the
file and the key; the old spelling (`{type: ga, preset: paper}`, architectures without `model:`) is refused
with the new one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from encoders.cli import main
from encoders.compare.config import load_config
from encoders.errors import EncodersError
from encoders.synthesis import EGGRebuttal, EGGSettings, GARebuttal, GASettings
from encoders.twin import write_twin

ROOT = Path(__file__).resolve().parents[1]
PRIOR = str(ROOT / "data" / "priors" / "natural32")
CORE = {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("twin") / "twin.h5"
    write_twin(path, n_sessions=1, neurons_per_session=3, images_per_session=40, image_size=16, seed=0)
    return path


def spec(data: Path, out: Path) -> dict:
    return copy.deepcopy({
        "out": str(out),
        "data": {"path": str(data), "batch_size": 16},
        "architectures": {
            "attention": {"model": {"core": CORE, "readout": {"type": "attention", "embed_dim": 4, "heads": 1}}},
            "gaussian": {"model": {"core": CORE, "readout": {"type": "gaussian"}, "lr": 0.01}},
        },
        "seeds": {"generating": [0, 1], "held_out": [2]},
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
        "meis": {"top_k": 3, "seeds": [0, 1], "contrast": 0.3},
        "methods": {"ga": {"class_path": "encoders.synthesis.GASettings", "init_args": {"steps": 3}},
                    "egg": {"class_path": "encoders.synthesis.EGGSettings", "init_args": {"prior": PRIOR, "num_steps": 3}}},
        "meni": {"class_path": "encoders.synthesis.EGGSettings", "init_args": {"prior": PRIOR, "num_steps": 3}},
        "reconstructions": {"images": 1, "methods": ["ga", "egg"]},
    })


def write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("encoders: error: ") and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("change, fragments", [
    (lambda s: s["architectures"]["attention"]["model"]["core"].update(layers=0),
     ["architectures.attention.model: core: layers must be a positive integer, got 0"]),
    (lambda s: s["architectures"]["gaussian"]["model"]["readout"].update(gauss_tipe="full"),
     ["architectures.gaussian.model: readout: unknown argument(s) ['gauss_tipe']"]),
    (lambda s: s["architectures"]["gaussian"]["model"].update(lrr=0.1), ["architectures.gaussian", "'lrr'"]),
])
def test_an_invalid_architecture_fails_in_one_line_before_training(tmp_path, data, capsys, change, fragments):
    values = spec(data, tmp_path / "out")
    change(values)
    line = one_line_error(["compare", str(write(tmp_path / "compare.yaml", values))], capsys)
    for fragment in ["compare.yaml", *fragments]:
        assert fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.yaml"]  # nothing trained, nothing written


def test_a_valid_spec_reads_the_blocks_of_training_and_products(tmp_path, data):
    values = spec(data, tmp_path / "out")
    values["models"] = str(tmp_path / "other" / "models")  # another comparison's models, reused
    values["methods"].update({
        "ga_paper": {"class_path": "encoders.synthesis.GARebuttal"},
        "egg_paper": {"class_path": "encoders.synthesis.EGGRebuttal", "init_args": {"prior": PRIOR, "batch_size": 7}},
    })
    values["pairs"] = {"paper": ["egg_paper", "ga_paper"]}
    values["early_stopping"] = None
    config = load_config(write(tmp_path / "compare.yaml", values), out=tmp_path / "elsewhere")
    assert config.out == tmp_path / "elsewhere" and config.models == tmp_path / "other" / "models"
    assert config.architectures["gaussian"].model == values["architectures"]["gaussian"]["model"]  # as written
    assert config.data == values["data"] and config.trainer == values["trainer"] and config.early_stopping is None
    # every method at the comparison's seeds and contrast; presets keep their own other settings
    assert config.methods["ga"] == GASettings(seeds=(0, 1), steps=3, contrast=0.3)
    assert config.methods["ga_paper"] == GARebuttal(seeds=(0, 1), contrast=0.3)
    assert config.methods["egg_paper"] == EGGRebuttal(prior=PRIOR, seeds=(0, 1), contrast=0.3, batch_size=7)
    assert config.meni == EGGSettings(prior=PRIOR, seeds=(0, 1), num_steps=3, contrast=None)
    assert config.pairs == {"paper": ("egg_paper", "ga_paper")}
    assert config.similarity is not None and config.wandb is None  # similarity on unless null; W&B off unless given
    assert load_config(write(tmp_path / "plain.yaml", spec(data, tmp_path / "out"))).pairs == {"defaults": ("egg", "ga")}
    # reconstructions name MEI methods (at the reconstruction contrast) ...
    assert config.reconstruction_methods == {"ga": config.methods["ga"].replace(contrast=1.0),
                                             "egg": config.methods["egg"].replace(contrast=1.0)}


def test_reconstructions_declare_their_own_methods(tmp_path, data):
    """... or declare their own (the paper's reconstruction presets are not MEI methods); contrast null keeps theirs."""
    from encoders.synthesis import EGGReconstructionPaper, GDReconstructionPaper

    values = spec(data, tmp_path / "out")
    values["reconstructions"] = {"images": 1, "contrast": None, "metric": "mse", "seeds": [5], "methods": {
        "gd_paper": {"class_path": "encoders.synthesis.GDReconstructionPaper"},
        "egg_paper": {"class_path": "encoders.synthesis.EGGReconstructionPaper", "init_args": {"prior": PRIOR}}}}
    config = load_config(write(tmp_path / "compare.yaml", values))
    assert config.reconstruction_methods == {"gd_paper": GDReconstructionPaper(seeds=(5,)),
                                             "egg_paper": EGGReconstructionPaper(prior=PRIOR, seeds=(5,))}
    assert config.reconstruction_methods["gd_paper"].contrast == 0.6  # norm 60 at 100x100, the paper's
    assert config.reconstruction_pairs == {"defaults": ("egg_paper", "gd_paper")}
    values["reconstructions"]["stop_at"] = {"gd_paper": "egg_paper"}
    assert load_config(write(tmp_path / "stop.yaml", values)).reconstructions.stop_at == {"gd_paper": "egg_paper"}
    for stop_at, message in (({"egg_paper": "gd_paper"}, "EGGReconstructionPaper runs a fixed schedule"),
                             ({"gd_paper": "nope"}, "name two reconstruction methods"),
                             ({"gd_paper": "egg_paper", "egg_paper": "gd_paper"}, "stops at another method itself")):
        values["reconstructions"]["stop_at"] = stop_at
        with pytest.raises(EncodersError, match=f"reconstructions.stop_at.*{message}"):
            load_config(write(tmp_path / "bad.yaml", values))
    assert set(config.methods) == {"ga", "egg"}  # not MEI methods


def test_a_method_block_pastes_between_a_training_yaml_and_a_spec(tmp_path, data):
    """The quickstart's EGG MEI product, pasted as a comparison's method: the same settings but the comparison's
    seeds and contrast."""
    quickstart = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    products = next(c for c in quickstart["trainer"]["callbacks"] if c["class_path"] == "encoders.callbacks.Products")
    block = next(p["init_args"]["method"] for p in products["init_args"]["products"]
                 if p["class_path"] == "encoders.products.MEIs" and "class_path" in p["init_args"]["method"])
    values = spec(data, tmp_path / "out")
    values["methods"]["pasted"] = copy.deepcopy(block)
    values["methods"]["pasted"]["init_args"]["prior"] = PRIOR  # the shipped prior, wherever the tests run
    method = load_config(write(tmp_path / "compare.yaml", values)).methods["pasted"]
    assert method == EGGSettings(**{**block["init_args"], "prior": PRIOR, "seeds": (0, 1), "contrast": 0.3})


@pytest.mark.parametrize("change, fragments", [
    (lambda s: s["methods"].update(ga={"type": "ga", "steps": 3}),
     ["methods.ga:", "old spelling", "ga: {class_path: encoders.synthesis.GASettings, init_args: {steps: 3}}"]),
    (lambda s: s["methods"].update(ga_paper={"type": "ga", "preset": "paper"}),
     ["methods.ga_paper:", "ga_paper: {class_path: encoders.synthesis.GARebuttal}"]),
    (lambda s: s["methods"].update(egg_paper={"type": "egg", "preset": "paper", "prior": "p"}),
     ["egg_paper: {class_path: encoders.synthesis.EGGRebuttal, init_args: {prior: p}}"]),
    (lambda s: s["methods"].update(ga={"steps": 3}), ["methods.ga: name the method's class"]),
    (lambda s: s.update(meni={"prior": "p", "num_steps": 3}),
     ["meni: name the method's class", "{class_path: encoders.synthesis.EGGSettings, init_args: {prior: p, num_steps: 3}}"]),
    (lambda s: s["architectures"].update(gaussian={"core": CORE, "readout": {"type": "gaussian"}, "optional": True}),
     ["architectures.gaussian:", "go under `model:`", "gaussian: {model: {core: {type: stacked,", "optional: true}"]),
])
def test_the_old_spelling_is_refused_with_the_new_one(tmp_path, data, capsys, change, fragments):
    values = spec(data, tmp_path / "out")
    change(values)
    line = one_line_error(["compare", str(write(tmp_path / "compare.yaml", values))], capsys)
    for fragment in ["compare.yaml", *fragments]:
        assert fragment in line, line


@pytest.mark.parametrize("change, message", [
    # unknown keys, at every level
    (lambda s: s.update(ga={"steps": 3}), r"compare.yaml: .*'ga\.steps'"),
    (lambda s: s["data"].update(batchsize=3), r"Group 'data' does not accept option 'batchsize'"),
    (lambda s: s["trainer"].update(max_epoch=1), r"Group 'trainer' does not accept option 'max_epoch'"),
    (lambda s: s["architectures"]["attention"].update(optinal=True), r"architectures.attention: .*'optinal'"),
    (lambda s: s["meis"].update(topk=1), r"Group 'meis' does not accept option 'topk'"),
    (lambda s: s["methods"]["ga"]["init_args"].update(stepz=3), r"methods.ga: .*stepz"),
    (lambda s: s["reconstructions"].update(image=1), r"Group 'reconstructions' does not accept option 'image'"),
    (lambda s: s.update(similarity={"measure": ["cka_linear"]}), r"Group 'similarity' does not accept option 'measure'"),
    (lambda s: s.update(seeds={"generating": [0], "heldout": [1]}), r"Group 'seeds' does not accept option 'heldout'"),
    (lambda s: s.update(early_stopping={"patiense": 3}), r"Group 'early_stopping' does not accept option 'patiense'"),
    # what compare sets itself
    (lambda s: s["trainer"].update(callbacks=[]), r"trainer: \['callbacks'\] are set by `encoders compare`"),
    (lambda s: s["data"].update(seed=1), r"data: \['seed'\] are set by `encoders compare`"),
    (lambda s: s["methods"]["ga"]["init_args"].update(norm=2.0), r"methods.ga: norm: every method's norm is set by meis.contrast"),
    # values
    (lambda s: s["data"].update(batch_size=0), r"data: data.batch_size: must be a positive integer, got 0"),
    (lambda s: s["trainer"].update(max_time="forever"), r"trainer: .*not a valid duration"),
    (lambda s: s["methods"]["ga"]["init_args"].update(steps=0), r"methods.ga: method: need steps >= 1"),
    (lambda s: s["methods"]["egg"]["init_args"].update(prior=str(Path("nowhere").resolve())),
     r"methods.egg: .*nowhere: diffusion prior folder not found"),
    (lambda s: s.update(meni={"class_path": "encoders.synthesis.GASettings"}), r"meni: .*MENIs keep a diffusion prior's contrast"),
    (lambda s: s["meis"].update(keep="first"), r"meis.keep.*first"),
    (lambda s: s["meis"].update(top_k=0), r"meis.top_k.*0"),
    (lambda s: s.update(seeds={"generating": [0], "held_out": [0]}), r"seeds: a seed cannot both generate MEIs and be held out"),
    (lambda s: s.update(pairs={"x": ["egg", "gaa"]}), r"pairs.x: must be \[method, other method\]"),
    (lambda s: s["reconstructions"].update(methods=["egg", "nope"]), r"reconstructions.methods: name methods of `methods`"),
    (lambda s: s["reconstructions"].update(methods={"gd": {"class_path": "encoders.synthesis.GDReconstructionPaper",
                                                            "init_args": {"lr": 1.0}}}),
     r"reconstructions.methods.gd: .*lr"),
    (lambda s: s["reconstructions"].update(seeds=[1, 1]), r"reconstructions.seeds: give distinct seeds"),
    (lambda s: s["methods"].update(meni=s["methods"]["ga"]), r"methods.meni: this name is taken"),
    (lambda s: s.update(similarity={"measures": ["cka"]}), r"similarity.measures: unknown \['cka'\]"),
])
def test_every_bad_key_or_value_names_the_file_and_the_key(tmp_path, data, change, message):
    values = spec(data, tmp_path / "out")
    change(values)
    with pytest.raises(EncodersError, match=message) as error:
        load_config(write(tmp_path / "compare.yaml", values))
    assert str(error.value).startswith(f"{tmp_path / 'compare.yaml'}: ") and "\n" not in str(error.value)


def test_a_key_given_twice_is_refused(tmp_path, data, capsys):
    text = yaml.safe_dump(spec(data, tmp_path / "out"), sort_keys=False) + "meis: {top_k: 1}\n"
    line = one_line_error(["compare", str(write_text(tmp_path / "compare.yaml", text))], capsys)
    assert "compare.yaml" in line and "key 'meis' given twice" in line


def test_the_machine_is_checked_before_training(tmp_path, data, capsys):
    values = spec(data, tmp_path / "out")
    values["data"]["path"] = str(tmp_path / "missing.h5")
    line = one_line_error(["compare", str(write(tmp_path / "compare.yaml", values))], capsys)
    assert "missing.h5" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.yaml"]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
