"""Every shipped training config (experiments/, its ablations and presets) names a valid model: a misspelt
core or readout option would otherwise surface only minutes into someone's run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from encoders.training import EncodingModel

ROOT = Path(__file__).resolve().parents[1]
TRAINING_CONFIGS = [p for p in sorted(ROOT.glob("experiments/**/*.yaml"))
                    if "core" in ((yaml.safe_load(p.read_text()) or {}).get("model") or {})]  # not the priors' model sections


def test_there_are_training_configs():
    names = {p.relative_to(ROOT / "experiments").as_posix() for p in TRAINING_CONFIGS}
    assert {"cowley_attention.yaml", "cowley_gaussian.yaml", "quickstart.yaml", "v4_ablations/gaussian_before.yaml"} <= names


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.relative_to(ROOT / "experiments").as_posix())
def test_training_config_names_a_valid_model(path):
    model = yaml.safe_load(path.read_text())["model"]
    EncodingModel(**model)  # checks every core and readout option before any data is read


COMPARE_CONFIGS = sorted(ROOT.glob("experiments/compare_*.yaml"))


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=lambda p: p.name)
def test_comparison_config_loads(path):
    from encoders.compare.config import load_config

    config = load_config(path)  # every key, method, pair and prior checked
    assert all(a in config.methods and b in config.methods for a, b in config.pairs.values())
    assert config.pairs or len(config.methods) == 1  # a spec of one method (e.g. a similarity study) compares no pair


def test_egg_sweep_reuses_the_twin_comparisons_models():
    """The sweep trains nothing: its model requests are compare_twin.yaml's, so `models:` finds them finished."""
    from encoders.compare.config import load_config

    sweep, twin = (load_config(ROOT / "experiments" / f"{n}.yaml") for n in ("compare_twin_egg_sweep", "compare_twin"))
    assert sweep.models == twin.models and sweep.seeds == twin.seeds and sweep.architectures == twin.architectures
    assert (sweep.data, sweep.trainer, sweep.early_stopping) == (twin.data, twin.trainer, twin.early_stopping)
    assert sweep.methods["ga"] == twin.methods["ga"] and sweep.methods["egg"] == twin.methods["egg"]
