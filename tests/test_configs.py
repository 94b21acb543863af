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
