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
        "methods": {"ga": {"type": "ga", "steps": 3}, "egg": {"type": "egg", "prior": PRIOR, "num_steps": 3}},
        "meni": {"prior": PRIOR, "num_steps": 3},
        "reconstructions": {"images": 1, "methods": ["ga", "egg"]},
        "similarity": {"measures": ["cka_linear", "procrustes_angular_score"], "max_features": 16},
        "wandb": None,
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
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
    assert result.method.values.tolist() == ["ga", "egg", "meni"]
    assert result.method_type.values.tolist() == ["ga", "egg", "meni"]
    assert result.scorer.values.tolist() == ["attention/seed0", "attention/seed1", "gaussian/seed0", "gaussian/seed1",
                                             "ground_truth"]
    expected = {"attention": ["generating", "within", "cross", "cross", "ground_truth"],
                "gaussian": ["cross", "cross", "generating", "within", "ground_truth"]}
    for architecture, relations in expected.items():
        assert result.relation.sel(architecture=architecture).values.tolist() == relations
    for architecture in result.architecture.values.tolist():
        for method in ("ga", "egg", "meni"):
            with xr.open_dataset(out / "meis" / architecture / f"mei_{method}.nc") as meis:
                makers = recorded_checkpoints(meis)
                assert meis.image.shape[:3] == (1, 3, 2) and meis.wall_seconds.item() > 0
                norms = np.sqrt((meis.image.values ** 2).sum(axis=(-3, -2, -1)))
                if method != "meni":  # MENIs keep the prior's contrast
                    assert (norms <= 0.25 * 16 * (1 + 1e-4)).all()  # the MEIs' norm for both methods (GA clamps below it)
                assert int(meis.steps.item()) == 3 and meis.trace.sizes["step"] == 3
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
    # natural images rescaled to the MEIs' norm: a second yardstick, not applied to MENIs (their own contrast)
    assert (result.natural_max_matched > 0).all() and not np.allclose(result.natural_max_matched, result.natural_max)
    np.testing.assert_allclose(result.matched_activation.sel({"method": ["ga", "egg"]}),
                               (result.activation / result.natural_max_matched).sel({"method": ["ga", "egg"]}))
    assert result.matched_activation.sel({"method": "meni"}).isnull().all()
    # the ensemble's own pick among natural images cannot beat any generating member's best natural image
    for architecture in result.architecture.values.tolist():
        generating = result.relation.sel(architecture=architecture).values == "generating"
        picked = result.top_natural_normalised.sel(architecture=architecture).isel(scorer=np.flatnonzero(generating))
        assert (picked <= 1 + 1e-5).all()
    # ... and that image at each MENI's norm, one score per MENI seed
    assert result.top_natural_at_meni_contrast.dims == ("architecture", "scorer", "neuron", "seed")
    assert np.isfinite(result.top_natural_at_meni_contrast).all()
    assert result.seconds_to_reference.dims == ("pair", "side", "architecture")
    assert result.pair_methods.values.tolist() == [["egg", "ga"]]
    with xr.open_dataset(out / "reconstructions.nc") as recon:
        assert recon.reconstruction_score.dims == ("architecture", "method", "scorer", "image", "seed")
        assert recon.method.values.tolist() == ["ga", "egg"] and recon.sizes["image"] == 2  # 1 test image x 2 sessions
        assert np.isfinite(recon.reconstruction_score).all() and (np.abs(recon.reconstruction_score) <= 1 + 1e-6).all()
    with xr.open_dataset(out / "accuracy.nc") as accuracy:
        assert accuracy.correlation.dims == ("architecture", "seed", "neuron") and accuracy.sizes["neuron"] == 8
        assert "ground_truth_correlation" in accuracy
    with xr.open_dataset(out / "similarity.nc") as similarity:
        assert similarity.score.dims == ("measure", "representation", "model_a", "model_b")
        assert np.isnan(np.diagonal(similarity.score.values, axis1=2, axis2=3)).all()


def test_report_and_figures(compared):
    out, _ = compared
    report = (out / "report.md").read_text()
    for heading in ("## Accuracy", "## Do MEIs generalise?", "### `egg` vs `ga` (defaults)", "### MENIs vs the top natural image",
                    "## Do reconstructions generalise?", "## Compute time", "## Similarity of representations"):
        assert heading in report
    assert "Do `egg` MEIs transfer to the true neurons better than `ga`?" in report
    assert "TRUE neurons, vs natural images at the MEIs' contrast" in report
    assert "architecture `resnet` skipped" in report
    for name in ("accuracy", "neuron_scatter", "generalisation", "time", "compute", "meis", "similarity"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"figures/{name}.png" in report


def test_rerun_skips_finished_parts(compared, capsys):
    out, config = compared
    finished = sorted([*out.glob("models/*/seed*/checkpoints/*.ckpt"), *out.glob("models/*/seed*/test_metrics.nc"),
                       *out.glob("meis/*/*.nc"), *out.glob("scores/*.nc"), *out.glob("reconstructions/*/*.nc"),
                       out / "similarity.nc"])
    # checkpoints, test tables, 3 image sets and 5 score tables per architecture (+ natural), 2 reconstruction sets each
    assert len(finished) == 4 * 3 + 2 * 3 + (2 * 5 + 1) + 2 * 2 + 1
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


def test_methods_pairs_and_presets_are_checked(tmp_path, twin):
    from encoders.synthesis.gradient_ascent import GASettings
    from encoders.synthesis.methods import EGGSettings

    config = tiny_config(twin, tmp_path / "out")
    config["meis"]["contrast"] = 0.3
    config["methods"] = {"ga": {"type": "ga", "steps": 3}, "ga_paper": {"type": "ga", "preset": "paper"},
                         "egg_paper": {"type": "egg", "preset": "paper", "prior": PRIOR, "batch_size": 7}}
    config["pairs"] = {"paper": ["egg_paper", "ga_paper"]}
    config["reconstructions"] = {"images": 1, "methods": ["ga_paper", "egg_paper"]}
    config["models"] = str(tmp_path / "other" / "models")  # another comparison's models, reused
    loaded = load_config(write_config(tmp_path / "presets.yaml", config))
    assert loaded.models == tmp_path / "other" / "models" and loaded.out == tmp_path / "out"
    assert load_config(write_config(tmp_path / "plain.yaml", tiny_config(twin, tmp_path / "out"))).models == tmp_path / "out" / "models"
    # a preset is the paper's settings with the comparison's seeds and contrast (and any field given beside it)
    assert loaded.methods["ga_paper"] == GASettings.paper((0, 1)).__class__(**{**GASettings.paper((0, 1)).__dict__, "contrast": 0.3})
    assert loaded.methods["egg_paper"].energy_scale == EGGSettings.paper(PRIOR).energy_scale
    assert loaded.methods["egg_paper"].clip_denoised is False and loaded.methods["egg_paper"].batch_size == 7
    assert loaded.methods["ga"].contrast == 0.3 and loaded.meni.contrast is None and loaded.pairs == {"paper": ("egg_paper", "ga_paper")}

    def fails(change, message):
        broken = tiny_config(twin, tmp_path / "out")
        change(broken)
        with pytest.raises(EncodersError, match=message):
            load_config(write_config(tmp_path / "broken.yaml", broken))

    fails(lambda c: c["methods"]["ga"].update(type="sgd"), r"methods.ga.type: must be one of \['egg', 'ga'\], got 'sgd'")
    fails(lambda c: c["methods"]["ga"].update(contrast=1.0), r"methods.ga: \['contrast'\] are set by `encoders compare`")
    fails(lambda c: c["methods"]["egg"].update(prior=str(tmp_path / "nowhere")), r"methods.egg.prior: .*nowhere: diffusion prior folder not found")
    fails(lambda c: c["methods"]["egg"].pop("prior"), r"methods.egg.prior: is required")
    fails(lambda c: c["methods"].update({"egg_paper": {"type": "egg", "preset": "paper"}}), r"methods.egg_paper.prior: is required")
    fails(lambda c: c["methods"]["ga"].update(preset="fast"), r"methods.ga.preset: must be paper or absent, got 'fast'")
    fails(lambda c: c.update(pairs={"x": ["egg", "gaa"]}), r"pairs.x: must be \[method, other method\]")
    fails(lambda c: c["meni"].update(contrast=0.2), r"meni: \['contrast'\] are set by `encoders compare`")
    fails(lambda c: c["reconstructions"].update(methods=["egg", "nope"]), r"reconstructions.methods: name methods of `methods`")
    fails(lambda c: c["meis"].update(keep="first"), r"meis.keep: must be one of \['best', 'all'\], got 'first'")
    fails(lambda c: c.update(ga={"steps": 3}), r"unknown key\(s\) \['ga'\]")
    fails(lambda c: c["methods"].update(meni={"type": "ga"}), r"methods.meni: this name is taken")


def test_compute_to_reference_counts_steps_to_95_percent_of_ga():
    """GA reaches 95% of its final rate after 2 of 4 steps; EGG's x0 estimate after its 1st of 2 steps."""
    from encoders.compare.generalisation import activation_by_step, compute_to_reference

    def mei_set(kind: str, trace: list[float], final: float, seconds: float) -> xr.Dataset:
        data = xr.Dataset({"trace": (("method", "step", "neuron", "seed"), np.array(trace, float).reshape(1, -1, 1, 1)),
                           "activation": (("method", "neuron", "seed"), np.full((1, 1, 1), final)),
                           "wall_seconds": ("method", [seconds]), "steps": ("method", [len(trace)])})
        data.attrs.update({"method_type": kind, "egg_guide_at_norm": 1} if kind == "egg" else {"method_type": kind})
        return data

    meis = {("a", "ga"): mei_set("ga", [0.0, 5.0, 9.6, 9.9], 10.0, 8.0), ("a", "egg"): mei_set("egg", [9.7, 3.0], 9.8, 4.0)}
    ga_steps = activation_by_step(meis[("a", "ga")])[:, 0, 0]
    np.testing.assert_allclose(ga_steps, [0, 5, 9.6, 9.9, 10])  # after j = 0..4 steps; the final image last
    egg_steps = activation_by_step(meis[("a", "egg")])[:, 0, 0]
    assert np.isnan(egg_steps[0]) and egg_steps[1:].tolist() == [9.7, 9.8]  # x0 of step 1, then the final image
    result = compute_to_reference(meis, {"defaults": ("egg", "ga")}, ["a"])
    # 95% of 10 = 9.5: GA after 2 steps of 2 s, EGG after 1 step of 2 s
    assert result.seconds_to_reference.sel(pair="defaults", architecture="a").values.tolist() == [2.0, 4.0]
    assert (result.reached_reference == 1).all()
    meis[("a", "egg")] = mei_set("egg", [1.0, 2.0], 3.0, 4.0)
    result = compute_to_reference(meis, {"defaults": ("egg", "ga")}, ["a"])
    assert np.isinf(result.seconds_to_reference.sel(pair="defaults", side="first").item())
    assert result.reached_reference.sel(pair="defaults", side="first").item() == 0


def test_natural_images_at_the_meis_norm(twin):
    """The matched-contrast yardstick: each natural image rescaled, in model space, to the MEIs' L2 norm."""
    from encoders.compare.scoring import natural_pixels
    from encoders.datasets.datamodule import RecordedDataModule

    datamodule = RecordedDataModule(str(twin), batch_size=32)
    datamodule.setup("test")
    session = datamodule.sessions[0]
    own = natural_pixels(datamodule, session, ["validation", "test"])
    matched = natural_pixels(datamodule, session, ["validation", "test"], norm=4.0)
    assert own.shape == matched.shape and own.shape[0] == 40  # 20% validation + 20% test of 100 images
    norms = datamodule.transform.from_pixels(matched).flatten(1).norm(dim=1)
    np.testing.assert_allclose(norms.numpy(), 4.0, rtol=1e-4)
    np.testing.assert_allclose(datamodule.transform.from_pixels(own).numpy(),
                               torch.cat([datamodule.tier_data(session, t)["images"] for t in ("validation", "test")]).numpy(),
                               atol=1e-4)
