"""`encoders compare` on a tiny grid: 2 architectures x 2 seeds on a tiny twin, 1 epoch, few steps.

Checks the bookkeeping: which scorer counts as within / cross / generating, that an MEI is never
scored as "within" on a model that helped make it, that a re-run skips finished parts, that the
report and its figures exist, and that config typos are clear errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from encoders.cli import main
from encoders.compare.config import load_config
from encoders.compare.generalisation import relation
from encoders.errors import EncodersError
from encoders.products.store import recorded_checkpoints
from encoders.twin import write_twin

torch.set_num_threads(1)
PRIOR = str(Path(__file__).resolve().parents[1] / "data" / "priors" / "natural32")
CORE = {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3}


def tiny_config(data: Path, out: Path) -> dict:
    return {
        "out": str(out),
        "data": {"path": str(data), "batch_size": 32},
        "architectures": {
            "attention": {"core": CORE, "readout": {"type": "attention", "embed_dim": 4, "heads": 1, "dropout": 0.0}},
            "gaussian": {"core": CORE, "readout": {"type": "gaussian", "gauss_type": "isotropic"}, "lr": 0.01},
            "resnet": {"optional": True, "core": {"type": "task_driven", "weights_path": str(out / "none.pth")},
                       "readout": {"type": "gaussian"}},
        },
        "seeds": {"generating": [0], "held_out": [1]},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0},
        "early_stopping": None,
        "meis": {"top_k": 3, "seeds": [0, 1]},
        "ga": {"steps": 3},
        "egg": {"prior": PRIOR, "num_steps": 3},
        "similarity": {"measures": ["cka_linear", "procrustes_angular_score"], "max_features": 16},
        "wandb": None,
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("twin") / "twin.h5"
    write_twin(path, n_sessions=2, neurons_per_session=4, images_per_session=100, image_size=16, seed=0,
               validation_fraction=0.2, test_fraction=0.2, test_repeats=3)
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory, twin):
    root = tmp_path_factory.mktemp("compare")
    config = write_config(root / "compare.yaml", tiny_config(twin, root / "out"))
    assert main(["compare", str(config)]) == 0
    return root / "out", config


def test_labels_and_bookkeeping(compared):
    out, _ = compared
    with xr.open_dataset(out / "generalisation.nc") as result:
        result = result.load()
    assert result.activation.dims == ("architecture", "method", "scorer", "neuron", "seed")
    assert result.architecture.values.tolist() == ["attention", "gaussian"]  # resnet skipped: no torchvision/weights
    assert result.method.values.tolist() == ["ga", "egg"]
    assert result.scorer.values.tolist() == ["attention/seed0", "attention/seed1", "gaussian/seed0", "gaussian/seed1",
                                             "ground_truth"]
    expected = {"attention": ["generating", "within", "cross", "cross", "ground_truth"],
                "gaussian": ["cross", "cross", "generating", "within", "ground_truth"]}
    for architecture, relations in expected.items():
        assert result.relation.sel(architecture=architecture).values.tolist() == relations
    for architecture in result.architecture.values.tolist():
        for method in ("ga", "egg"):
            with xr.open_dataset(out / "meis" / architecture / f"mei_{method}.nc") as meis:
                makers = recorded_checkpoints(meis)
                assert meis.image.shape[:3] == (1, 3, 2) and meis.wall_seconds.item() > 0
                norms = np.sqrt((meis.image.values ** 2).sum(axis=(-3, -2, -1)))
                assert (norms <= 0.25 * 16 * (1 + 1e-4)).all()  # GA's norm for both methods (GA clamps below it)
                if method == "egg":
                    assert meis.attrs["egg_guide_at_norm"] == 1
            for scorer, kind in zip(result.scorer.values.tolist(), result.relation.sel(architecture=architecture).values):
                if scorer == "ground_truth":
                    continue
                checkpoint = str(out / "models" / scorer / "checkpoints" / "best.ckpt")
                # a model that helped make an MEI is "generating", never "within" (or "cross")
                assert (checkpoint in makers) == (kind == "generating"), (architecture, scorer, kind)
    normalised = result.activation / result.natural_max
    np.testing.assert_allclose(result.normalised_activation, normalised)
    assert np.isfinite(result.normalised_activation).all() and (result.natural_max > 0).all()
    with xr.open_dataset(out / "accuracy.nc") as accuracy:
        assert accuracy.correlation.dims == ("architecture", "seed", "neuron") and accuracy.sizes["neuron"] == 8
        assert "ground_truth_correlation" in accuracy
    with xr.open_dataset(out / "similarity.nc") as similarity:
        assert similarity.score.dims == ("measure", "representation", "model_a", "model_b")
        assert np.isnan(np.diagonal(similarity.score.values, axis1=2, axis2=3)).all()


def test_report_and_figures(compared):
    out, _ = compared
    report = (out / "report.md").read_text()
    for heading in ("## Accuracy", "## Do MEIs generalise?", "## Compute time", "## Similarity of representations"):
        assert heading in report
    assert "Does EGG transfer to the true neurons better than GA?" in report
    assert "architecture `resnet` skipped" in report
    for name in ("accuracy", "neuron_scatter", "generalisation", "time", "meis", "similarity"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"figures/{name}.png" in report


def test_rerun_skips_finished_parts(compared, capsys):
    out, config = compared
    finished = sorted([*out.glob("models/*/seed*/checkpoints/*.ckpt"), *out.glob("models/*/seed*/test_metrics.nc"),
                       *out.glob("meis/*/*.nc"), *out.glob("scores/*.nc"), out / "similarity.nc"])
    assert len(finished) == 4 * 3 + 4 + 5 + 1
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    (out / "meis" / "gaussian" / "mei_egg.nc").unlink()  # as if killed before this set was written
    (out / "models" / "gaussian" / "seed1" / "test_metrics.nc").unlink()  # ... or before this model was tested
    assert main(["compare", str(config)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("trained already") == 3
    assert "training gaussian/seed1 (resuming from" in printed and printed.count("compare: training") == 1
    remade = {p for p in finished if not p.is_file() or p.stat().st_mtime_ns != stamps[p]}
    # only the missing parts are made again; the EGG set came out identical, so its score table is kept
    assert remade == {out / "meis" / "gaussian" / "mei_egg.nc", out / "models" / "gaussian" / "seed1" / "test_metrics.nc"}


def test_unknown_config_keys_are_clear_errors(tmp_path, twin, capsys):
    config = tiny_config(twin, tmp_path / "out")
    config["architectures"]["attention"]["readout"]["embed_dimm"] = 4
    path = write_config(tmp_path / "typo.yaml", config)
    with pytest.raises(EncodersError, match=r"typo.yaml: architectures.attention.readout: unknown key\(s\) "
                                            r"\['architectures.attention.readout.embed_dimm'\]"):
        load_config(path)
    config = tiny_config(twin, tmp_path / "out")
    config["trainer"]["max_epoch"] = 1
    config["meis"]["topk"] = 1
    path = write_config(tmp_path / "typo2.yaml", config)
    assert main(["compare", str(path)]) == 2
    assert "typo2.yaml: trainer: unknown key(s) ['trainer.max_epoch']" in capsys.readouterr().err
    config = tiny_config(twin, tmp_path / "out")
    config["trainer"]["callbacks"] = []
    with pytest.raises(EncodersError, match=r"trainer: \['callbacks'\] are set by `encoders compare`"):
        load_config(write_config(tmp_path / "reserved.yaml", config))
    assert not (tmp_path / "out").exists()


def test_relation_never_calls_a_generating_member_within():
    assert relation("a", "a", 0, [0, 1]) == "generating"
    assert relation("a", "a", 2, [0, 1]) == "within"
    assert relation("a", "b", 0, [0, 1]) == "cross"
    assert relation("a", None, None, [0, 1]) == "ground_truth"


def test_egg_guides_at_norm_only_with_a_norm():
    """Guiding at the kept norm needs a norm: without a contrast (the prior's own, as for MENIs) the
    settings record that it was not done, so such images never share a fingerprint with guided ones."""
    from encoders.synthesis.methods import EGGSettings

    guided = EGGSettings(prior=PRIOR, contrast=0.25, guide_at_norm=True).attrs((1, 16, 16))
    assert guided["egg_guide_at_norm"] == 1 and guided["egg_norm"] == pytest.approx(0.25 * 16)
    free = EGGSettings(prior=PRIOR, contrast=None, guide_at_norm=True).attrs((1, 16, 16))
    assert free["egg_guide_at_norm"] == 0 and np.isnan(free["egg_norm"])
    assert EGGSettings(prior=PRIOR, contrast=0.25, guide_at_norm=False).attrs((1, 16, 16))["egg_guide_at_norm"] == 0
    with pytest.raises(EncodersError, match="method.contrast: must be positive or null"):
        EGGSettings(prior=PRIOR, contrast=0.0)
