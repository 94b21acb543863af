"""`encoders compare` on a tiny grid: 2 architectures x 2 seeds on a tiny twin, 1 epoch, few steps.

Checks the bookkeeping: which scorer counts as within / cross / generating, that an MEI is never
scored as "within" on a model that helped make it, that each model trains alone from the train.py
config the comparison wrote for it, that a re-run skips finished parts, and that the report and its
figures exist. The spec's checks are in test_compare_spec.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from encoders.cli import main
from encoders.compare.generalisation import relation
from encoders.errors import EncodersError
from encoders.products.store import model_digest, recorded_checkpoints
from encoders.twin import write_twin

torch.set_num_threads(1)
PRIOR = str(Path(__file__).resolve().parents[1] / "data" / "priors" / "natural32")
CORE = {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3}


GA = "encoders.synthesis.GASettings"
EGG = "encoders.synthesis.EGGSettings"


def tiny_config(data: Path, out: Path) -> dict:
    return {
        "out": str(out),
        "data": {"path": str(data), "batch_size": 32},
        "architectures": {
            "attention": {"model": {"core": CORE, "readout": {"type": "attention", "embed_dim": 4, "heads": 1, "dropout": 0.0}}},
            "gaussian": {"model": {"core": CORE, "readout": {"type": "gaussian", "gauss_type": "isotropic"}, "lr": 0.01}},
            "resnet": {"optional": True, "model": {"core": {"type": "task_driven", "weights_path": str(out / "none.pth")},
                                                    "readout": {"type": "gaussian"}}},
        },
        "seeds": {"generating": [0], "held_out": [1]},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0},
        "early_stopping": None,
        "meis": {"top_k": 3, "seeds": [0, 1]},
        "methods": {"ga": {"class_path": GA, "init_args": {"steps": 3}},
                    "egg": {"class_path": EGG, "init_args": {"prior": PRIOR, "num_steps": 3}}},
        "meni": {"class_path": EGG, "init_args": {"prior": PRIOR, "num_steps": 3}},
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
                    assert meis.attrs["egg_guide_norm"] == meis.attrs["egg_norm"]  # guided at the kept norm
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
    with xr.open_dataset(out / "brain_similarity.nc") as brain:
        assert brain.score.dims == ("measure", "model") and brain.sizes["model"] == 4  # 2 architectures x 2 seeds
        assert np.isfinite(brain.score).all() and brain.pc_explained.dims == ("model", "component")
        assert brain.rank_agreement.sel(measure="cka_linear", other_measure="cka_linear") == pytest.approx(1.0)
        assert 0 <= brain.attrs["kendalls_w"] <= 1


def test_report_and_figures(compared):
    out, _ = compared
    report = (out / "report.md").read_text()
    for heading in ("## Accuracy", "## Do MEIs generalise?", "### `egg` vs `ga` (defaults)", "### MENIs vs the top natural image",
                    "## Do reconstructions generalise?", "## Compute time", "## Similarity of representations",
                    "## How brain-like is each model, and do the measures agree?", "Kendall's W"):
        assert heading in report
    assert "Do `egg` MEIs transfer to the true neurons better than `ga`?" in report
    assert "TRUE neurons, vs natural images at the MEIs' contrast" in report
    assert "architecture `resnet` skipped" in report
    for name in ("accuracy", "neuron_scatter", "generalisation", "time", "compute", "meis", "similarity"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"figures/{name}.png" in report


def test_each_model_trains_alone_from_its_config(compared, tmp_path):
    """`<models>/<arch>/seed<k>/config.yaml` is a complete train.py config: `python train.py fit --config` on it
    (here in-process, its folders moved elsewhere) trains the same model and writes the same test table."""
    from encoders.training.cli import run

    out, _ = compared
    folder = out / "models" / "gaussian" / "seed1"
    text = (folder / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["seed_everything"] == 1 and config["data"]["seed"] == 1 and config["model"]["lr"] == 0.01
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert callbacks[0] == "encoders.training.ModelCheckpoint" and "encoders.callbacks.MetricsTable" in callbacks
    assert config["trainer"]["logger"][0]["class_path"] == "pytorch_lightning.loggers.CSVLogger"
    alone = tmp_path / "alone"
    (tmp_path / "config.yaml").write_text(text.replace(str(folder), str(alone)))
    run(["fit", "--config", str(tmp_path / "config.yaml")])
    assert model_digest(alone / "checkpoints" / "best.ckpt") == model_digest(folder / "checkpoints" / "best.ckpt")
    xr.testing.assert_equal(xr.load_dataset(alone / "test_metrics.nc"), xr.load_dataset(folder / "test_metrics.nc"))
    assert (folder / "curves" / "metrics.csv").is_file()


def test_rerun_skips_finished_parts(compared, capsys):
    out, config = compared
    finished = sorted([*out.glob("models/*/seed*/checkpoints/*.ckpt"), *out.glob("models/*/seed*/test_metrics.nc"),
                       *out.glob("meis/*/*.nc"), *out.glob("scores/*.nc"), *out.glob("reconstructions/*/*.nc"),
                       out / "similarity.nc"])
    # checkpoints, test tables, 3 image sets (each also timed one at a time) and 5 score tables per architecture
    # (+ natural), 2 reconstruction sets each
    assert len(finished) == 4 * 3 + 2 * 3 * 2 + (2 * 5 + 1) + 2 * 2 + 1
    assert len(list(out.glob("meis/*/*_one_at_a_time.nc"))) == 2 * 3
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


def test_relation_never_calls_a_generating_member_within():
    assert relation("a", "a", 0, [0, 1]) == "generating"
    assert relation("a", "a", 2, [0, 1]) == "within"
    assert relation("a", "b", 0, [0, 1]) == "cross"
    assert relation("a", None, None, [0, 1]) == "ground_truth"


def test_egg_guides_at_norm_only_with_a_norm():
    """Guiding at the kept norm needs a norm: without a contrast (the prior's own, as for MENIs) the
    settings record that it was not done, so such images never share a fingerprint with guided ones."""
    from encoders.synthesis import EGGSettings

    guided = EGGSettings(prior=PRIOR, contrast=0.25).attrs((1, 16, 16))
    assert guided["egg_guide_norm"] == guided["egg_norm"] == pytest.approx(0.25 * 16)
    free = EGGSettings(prior=PRIOR, contrast=None).attrs((1, 16, 16))
    assert np.isnan(free["egg_guide_norm"]) and np.isnan(free["egg_norm"]) and free["egg_guide_contrast"] == "kept"
    assert np.isnan(EGGSettings(prior=PRIOR, contrast=0.25, guide_contrast=None).attrs((1, 16, 16))["egg_guide_norm"])
    assert EGGSettings(prior=PRIOR, contrast=None, guide_contrast=0.5).attrs((1, 16, 16))["egg_guide_norm"] == pytest.approx(8.0)
    with pytest.raises(EncodersError, match="method.guide_contrast"):
        EGGSettings(prior=PRIOR, guide_contrast=-1.0)
    with pytest.raises(EncodersError, match="method.contrast: must be positive or null"):
        EGGSettings(prior=PRIOR, contrast=0.0)


def test_compute_to_reference_counts_steps_to_95_percent_of_ga():
    """GA reaches 95% of its final rate after 2 of 4 steps; EGG's x0 estimate after its 1st of 2 steps."""
    from encoders.compare.generalisation import activation_by_step, compute_to_reference

    def mei_set(kind: str, trace: list[float], final: float, seconds: float) -> xr.Dataset:
        data = xr.Dataset({"trace": (("method", "step", "neuron", "seed"), np.array(trace, float).reshape(1, -1, 1, 1)),
                           "activation": (("method", "neuron", "seed"), np.full((1, 1, 1), final)),
                           "wall_seconds": ("method", [seconds]), "steps": ("method", [len(trace)])})
        data.attrs.update({"method_type": kind, "egg_norm": 4.0} if kind == "egg" else {"method_type": kind})
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
    from encoders.datasets.recording import Recording

    recording = Recording(str(twin))
    session = recording.sessions[0]
    own = natural_pixels(recording, session, ["validation", "test"])
    matched = natural_pixels(recording, session, ["validation", "test"], norm=4.0)
    assert own.shape == matched.shape and own.shape[0] == 40  # 20% validation + 20% test of 100 images
    norms = recording.transform.from_pixels(matched).flatten(1).norm(dim=1)
    np.testing.assert_allclose(norms.numpy(), 4.0, rtol=1e-4)
    np.testing.assert_allclose(recording.transform.from_pixels(own).numpy(),
                               torch.cat([recording.tier_data(session, t)["images"] for t in ("validation", "test")]).numpy(),
                               atol=1e-4)


def test_rank_agreement_by_hand():
    """Spearman between measures over models and Kendall's W, on orders derived by hand."""
    from encoders.compare.brain_similarity import rank_agreement

    same = np.array([[0.1, 0.5, 0.9, 0.3], [1.0, 2.0, 3.0, 1.5]])  # one order: 1 < 4 < 2 < 3
    spearman, w = rank_agreement(same)
    assert spearman[0, 1] == pytest.approx(1.0) and w == pytest.approx(1.0)
    reversed_ = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    spearman, w = rank_agreement(reversed_)
    assert spearman[0, 1] == pytest.approx(-1.0) and w == pytest.approx(0.0)
    # three measures, 3 models: ranks (1,2,3), (1,2,3), (2,1,3): rank sums 4, 5, 9 around a mean of 6: S = 4+1+9 = 14,
    # W = 12 S / (m^2 (n^3 - n)) = 168 / 216 = 7/9
    three = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [2.0, 1.0, 3.0]])
    totals = np.array([4.0, 5.0, 9.0])
    expected = 12 * ((totals - totals.mean()) ** 2).sum() / (9 * (27 - 3))
    assert rank_agreement(three)[1] == pytest.approx(expected) and expected == pytest.approx(7 / 9)
    assert np.isnan(rank_agreement(np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]]))[1])  # 2 complete models: too few
