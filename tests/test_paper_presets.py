"""The paper presets (experiments/*_paper.yaml) carry the values of Pierzchlewicz et al. 2023, parse, and build.

The values asserted here are those of sinzlab/nnvision (branch model_builder), trained_models/v4_data_driven.py
(the data-driven core and attention readout) and v4_task_driven.py (the Gaussian readout); see the YAML headers.
Also: the attention readout's `query_init` option that the attention preset needs.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from encoders.compare.config import load_config
from encoders.datasets.transforms import ImageTransform
from encoders.encoder import Encoder
from encoders.readouts import AttentionReadout
from encoders.training import EncodingModel

from conftest import ROOT

EXPERIMENTS = ROOT / "experiments"

PAPER_CORE = {
    "type": "stacked", "hidden_channels": 96, "layers": 5, "input_kernel": 9, "hidden_kernel": 5, "pad_input": False,
    "depth_separable": True, "batch_norm_momentum": 0.9, "se_reduction": None, "gamma_input": 10.0, "gamma_hidden": 0.0,
}
# the paper scales attention logits by 1/sqrt(96 core channels), ours by 1/sqrt(embed_dim 128): temperature makes up
PAPER_ATTENTION = {
    "type": "attention", "embed_dim": 128, "heads": 1, "temperature": pytest.approx(math.sqrt(96 / 128)), "dropout": 0.1,
    "gamma_features": 1.0, "gamma_query": 1.0, "query_init": "constant",
}
PAPER_GAUSSIAN = {"type": "gaussian", "gauss_type": "isotropic", "init_mu_range": 0.4, "init_sigma": 0.6, "gamma_features": 3.0}
PAPER = {"attention": (PAPER_ATTENTION, 0.0), "gaussian": (PAPER_GAUSSIAN, -1.0)}  # readout, elu_offset
SESSIONS = {
    "a": {"neuron_ids": ["a0", "a1", "a2"], "mean_response": [0.5, 1.0, 2.0], "n_train": 10},
    "b": {"neuron_ids": [f"b{i}" for i in range(5)], "mean_response": [1.0] * 5, "n_train": 10},
}


def _printed_config(path, capsys, monkeypatch) -> dict:
    """The config as train.py's LightningCLI parses it (so every key and type is accepted there); in this
    process: `train.py --print_config` as a subprocess spent 8 s importing the same modules."""
    from encoders.training.cli import run

    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(["fit", "--config", str(path), "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("kind", ["attention", "gaussian"])
def test_paper_preset_parses_and_carries_the_papers_values(kind, capsys, monkeypatch):
    path = EXPERIMENTS / f"cowley_{kind}_paper.yaml"
    config = _printed_config(path, capsys, monkeypatch)
    readout, elu_offset = PAPER[kind]
    model = config["model"]
    assert model["core"] == PAPER_CORE
    assert model["readout"] == readout
    assert model["elu_offset"] == elu_offset
    assert config["data"]["resize"] == [100, 100] and config["data"]["grayscale"] is True
    assert config["data"]["batch_size"] == 64
    assert config["trainer"]["accelerator"] == "gpu" and config["trainer"]["devices"] == 1
    assert f"runs/cowley_{kind}_paper" in path.read_text() and "_gpu" not in path.read_text()
    header = path.read_text().split("seed_everything")[0]
    assert "Pierzchlewicz et al. 2023" in header and "v4_data_driven.py" in header
    EncodingModel(**{k: v for k, v in model.items() if k != "data_info"})  # the model's own checks accept it


def test_paper_comparison_uses_the_presets_architectures():
    config = load_config(EXPERIMENTS / "compare_cowley_paper.yaml")
    assert set(config.architectures) == {"attention", "gaussian", "task_driven"}
    for kind in ("attention", "gaussian"):
        preset = yaml.safe_load((EXPERIMENTS / f"cowley_{kind}_paper.yaml").read_text())["model"]
        architecture = config.architectures[kind].model
        assert architecture["core"] == preset["core"] == PAPER_CORE
        assert architecture["readout"] == preset["readout"] == PAPER[kind][0]
        assert architecture.get("elu_offset", 0.0) == preset.get("elu_offset", 0.0) == PAPER[kind][1]
    task_driven = config.architectures["task_driven"].model
    assert task_driven["core"]["layer"] == "layer3.0" and task_driven["core"]["model_name"] == "resnet50"
    assert task_driven["readout"] == PAPER_GAUSSIAN and task_driven["elu_offset"] == -1.0
    assert config.data["resize"] == [100, 100] and config.data["batch_size"] == 64


def test_cpu_configs_say_they_are_not_the_papers():
    for name in ("cowley_attention", "cowley_gaussian", "compare_cowley"):
        header = (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()[:3]
        assert "CPU-sized" in header[0] and any("NOT the values of Pierzchlewicz et al. 2023" in line for line in header)
    assert not list(EXPERIMENTS.glob("*_gpu.yaml"))


@pytest.mark.parametrize("kind", ["attention", "gaussian"])
def test_encoder_builds_from_the_paper_preset_and_runs(kind):
    config = yaml.safe_load((EXPERIMENTS / f"cowley_{kind}_paper.yaml").read_text())
    model = config["model"]
    torch.manual_seed(0)
    encoder = Encoder(model["core"], model["readout"], SESSIONS, [1, 100, 100], ImageTransform().state(),
                      elu_offset=model.get("elu_offset", 0.0))
    core = encoder.core
    assert len(core.layers) == 5 and core.input_conv.kernel_size == (9, 9) and core.input_conv.padding == (0, 0)
    assert all(conv.kernel_size == (5, 5) and conv.groups == 96 for conv in core.spatial_convs)
    assert all(m.momentum == 0.9 for m in core.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert core.gamma_input == 10.0 and core.output_shape((1, 100, 100)) == (96, 92, 92)

    readout = encoder.readouts["b"]
    if kind == "attention":
        assert readout.heads == 1 and readout.embed_dim == 128 and readout.gamma_query == 1.0
        assert readout.scale / readout.temperature == pytest.approx(96 ** -0.5)  # the paper's logit scale
        assert torch.all(readout.query == 1 / 96)
    else:
        assert readout.gauss_type == "isotropic" and torch.all(readout.sigma == 0.6)
        assert readout.mu.abs().max() <= 0.4
    assert readout.gamma_features == PAPER[kind][0]["gamma_features"]

    images = torch.randn(2, 1, 100, 100)
    for mode in (encoder.train, encoder.eval):
        mode()
        rates = encoder(images, "b")
        assert rates.shape == (2, 5) and torch.isfinite(rates).all() and (rates > 0).all()
    encoder.train()
    loss = encoder(images, "a").sum() + encoder.regularizer("a")
    loss.backward()
    assert torch.isfinite(loss)


# --- the attention readout's query_init ------------------------------------------------------


def test_constant_query_init_gives_every_neuron_the_same_attention_at_init():
    torch.manual_seed(0)
    readout = AttentionReadout((8, 5, 6), 4, embed_dim=12, heads=2, query_init="constant").eval()
    assert torch.all(readout.query == 1 / 8)  # 1 / core channels, as nnvision's SharedMultiHeadAttention2d
    features = torch.randn(3, 8, 5, 6)
    maps = readout.spatial_maps(features)
    torch.testing.assert_close(maps, maps[:, :1].expand_as(maps))  # the same map for every neuron
    assert not torch.allclose(maps[0], maps[1])  # ...which still depends on the image

    normal = AttentionReadout((8, 5, 6), 4, embed_dim=12, heads=2).eval()
    normal_maps = normal.spatial_maps(features)
    assert not torch.allclose(normal_maps[:, 0], normal_maps[:, 1])  # random queries: different maps

    readout.train()
    readout(features).sum().backward()
    assert readout.query.grad is not None and readout.query.grad.abs().sum() > 0  # the queries still learn


def test_query_init_default_is_unchanged():
    torch.manual_seed(3)
    default = AttentionReadout((8, 4, 4), 5, embed_dim=8, heads=2)
    torch.manual_seed(3)
    normal = AttentionReadout((8, 4, 4), 5, embed_dim=8, heads=2, query_init="normal")
    for (name, a), (_, b) in zip(default.state_dict().items(), normal.state_dict().items()):
        assert torch.equal(a, b), name
    assert default.query.std() > 0.5  # N(0, 1) entries


@pytest.mark.parametrize("value", ["uniform", "Constant", None, 1.0])
def test_query_init_rejects_unknown_values(value):
    with pytest.raises(ValueError, match="query_init must be 'normal' or 'constant'"):
        AttentionReadout((8, 4, 4), 5, embed_dim=8, heads=2, query_init=value)
