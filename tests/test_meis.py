"""MEIs and reconstructions as products: the Products callback after fit, the store, `encoders mei` /
`reconstruct`, best seeds, failed samples, and scores on a twin's true neurons."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import xarray as xr
from matplotlib.figure import Figure

from encoders.callbacks import Products
from encoders.callbacks.products import kept_checkpoints
from encoders.checkpoints import load_encoder
from encoders.cli import main
from encoders.datasets.datamodule import RecordedDataModule
from encoders.datasets.io import write_dataset
from encoders.datasets.transforms import ImageTransform
from encoders.encoder import Encoder
from encoders.ensemble import load_models
from encoders.errors import EncodersError
from encoders.products import MEIs, ProductData, Reconstructions, make_products
from encoders.products.figures import FAILED_FRACTION, failed_samples, mei_figure
from encoders.products.meis import mei_dataset
from encoders.products.store import fingerprint, get_or_make, model_digest, recorded_checkpoints
from encoders.synthesis import EGGSettings, GASettings
from encoders.training import EncodingModel, ModelCheckpoint
from encoders.twin import make_twin
from encoders.twin.scoring import GroundTruthActivation
from conftest import make_session

pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: thread start-up dominates on 2 shared cores
CORE = {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3}
READOUT = {"type": "attention", "embed_dim": 4, "heads": 1, "dropout": 0.0}
GA = GASettings(seeds=(0, 1), steps=4, batch_size=3)
RECONSTRUCTION = GASettings(seeds=(0, 1), steps=4, batch_size=3, contrast=1.0)  # z-scored images' RMS
PRIOR = str(Path(__file__).resolve().parents[1] / "data" / "priors" / "natural32")


def fit(root, data, callbacks) -> pl.Trainer:
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, monitor="val/correlation", mode="max"),
                   *callbacks],
    )
    trainer.fit(EncodingModel(core=CORE, readout=READOUT), RecordedDataModule(str(data), batch_size=16))
    return trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_dataset(path, [make_session("s0", n_images=40, n_neurons=5), make_session("s1", n_images=40, n_neurons=3, seed=1)])
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """A one-epoch fit with MEIs (top 3) and reconstructions (2 test images of s1) for best and last."""
    root = tmp_path_factory.mktemp("run")
    products = Products([MEIs(top_k=3, method=GA), Reconstructions(images=2, sessions=["s1"], method=RECONSTRUCTION)])
    trainer = fit(root, data, [products])
    return root, trainer, products


def test_products_are_labelled_for_best_and_last(run):
    root, trainer, _ = run
    best = trainer.checkpoint_callback.best_model_path
    stems = {os.path.splitext(os.path.basename(best))[0], "last"}
    assert {p.name for p in (root / "products").iterdir()} == stems
    for stem in stems:
        folder = root / "products" / stem
        with xr.open_dataset(folder / "mei_ga.nc") as meis:
            assert meis.image.dims == ("method", "neuron", "seed", "channel", "y", "x")
            assert meis.image.shape == (1, 3, 2, 1, 16, 16)
            assert meis.method.values.tolist() == ["ga"] and meis.seed.values.tolist() == [0, 1]
            assert set(meis.session.values) <= {"s0", "s1"} and all("-n" in n for n in meis.neuron_id.values)
            assert meis.trace.dims == ("method", "step", "neuron", "seed") and meis.sizes["step"] == 4
            assert np.isfinite(meis.activation).all() and (meis.activation > 0).all()
            np.testing.assert_allclose(meis.image_pixels, meis.image * 0 + meis.image_pixels)  # both stored
            assert recorded_checkpoints(meis) == [str(root / "checkpoints" / f"{stem}.ckpt")] and meis.attrs["ga_steps"] == 4
            assert meis.attrs["product"] == "most exciting images" and meis.attrs["minimize"] == 0
            assert (np.diff(meis.validation_correlation.values) <= 1e-12).all()  # top-k, best first
            # every seed is kept; best_seed names the one of the highest activation per neuron
            assert meis.best_seed.dims == ("method", "neuron")
            activation = meis.activation.transpose("method", "neuron", "seed").values
            np.testing.assert_array_equal(meis.best_seed.values, meis.seed.values[activation.argmax(-1)])
        with xr.open_dataset(folder / "reconstruction_ga.nc") as recon:
            assert recon.reconstruction.dims == ("method", "image", "seed", "channel", "y", "x")
            assert recon.reconstruction.shape == (1, 2, 2, 1, 16, 16)
            assert recon.session.values.tolist() == ["s1", "s1"] and recon.test_index.values.tolist() == [0, 1]
            assert recon.target_responses.shape == (2, 3) and recon.neuron_id.values.tolist() == ["s1-n0", "s1-n1", "s1-n2"]
            assert recon.correlation.shape == (1, 2, 2) and np.isfinite(recon.correlation).all()
            assert recon.attrs["ga_contrast"] == 1.0 and recon.attrs["ga_steps"] == 4
            for name in ("target_image", "target_image_pixels", "predicted_responses", "image_correlation"):
                assert name in recon
        assert (folder / "mei_ga.png").stat().st_size > 0 and (folder / "reconstruction_ga.png").stat().st_size > 0


def test_product_files_record_their_checkpoints_as_a_list_and_their_fingerprint(run):
    root, trainer, products = run
    last = Path(trainer.checkpoint_callback.last_model_path)
    nc = root / "products" / "last" / "mei_ga.nc"
    with h5py.File(nc, "r") as f:  # stored as a list (NetCDF reads a one-element list back as a string)
        assert [str(p) for p in f.attrs["checkpoint"]] == [str(last)]
    mei = products.products[0]
    key = fingerprint([last], mei.request(load_encoder(last), ProductData()))
    with xr.open_dataset(nc) as meis:
        assert meis.attrs["fingerprint"] == key
    results, _, how = get_or_make([last], nc, mei.request(load_encoder(last), ProductData()),
                                  lambda: pytest.fail("an existing product was computed again"), mei.figure)
    assert how == "kept" and results.attrs["checkpoint"] == [str(last)]  # a list, read back by the store


def test_rerun_skips_existing_products_and_redraws_missing_figures(run):
    root, trainer, products = run
    folder = root / "products" / "last"
    stamp = (folder / "mei_ga.nc").stat().st_mtime_ns
    (folder / "mei_ga.png").unlink()
    products.on_fit_end(trainer, trainer.lightning_module)
    assert (folder / "mei_ga.nc").stat().st_mtime_ns == stamp  # not recomputed
    assert (folder / "mei_ga.png").is_file()  # redrawn from the NetCDF


def test_same_model_in_two_checkpoints_is_computed_once(run, tmp_path):
    root, trainer, _ = run
    best, last = Path(trainer.checkpoint_callback.best_model_path), Path(trainer.checkpoint_callback.last_model_path)
    assert best != last and model_digest(best) == model_digest(last)  # one epoch: best is last
    with xr.open_dataset(root / "products" / best.stem / "mei_ga.nc") as a, xr.open_dataset(root / "products" / "last" / "mei_ga.nc") as b:
        np.testing.assert_array_equal(a.image.values, b.image.values)
        assert recorded_checkpoints(b) == [str(last)] and a.attrs["fingerprint"] == b.attrs["fingerprint"]

    other = tmp_path / "other.ckpt"  # the same file with one weight changed is another model
    checkpoint = torch.load(last, weights_only=True)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] + 1e-3
    torch.save(checkpoint, other)
    assert model_digest(other) != model_digest(last)

    calls = []

    def compute() -> xr.Dataset:
        calls.append(1)
        return xr.Dataset({"x": ("i", np.arange(3.0))})

    def product(path: Path, folder: str, request: dict) -> str:
        return get_or_make([path], tmp_path / "products" / folder / "p.nc", request, compute, lambda r: Figure())[2]

    assert product(best, "best", {"a": 1}) == "made"
    assert product(last, "last", {"a": 1}) == "copied from best (the same model)"
    assert len(calls) == 1 and (tmp_path / "products" / "last" / "p.png").is_file()
    assert product(last, "last", {"a": 1}) == "kept"
    assert product(other, "other", {"a": 1}) == "made"  # other weights
    assert product(last, "last2", {"a": 2}) == "made"  # other request
    assert len(calls) == 3


def test_unknown_neuron_fails_before_training(tmp_path, data):
    with pytest.raises(EncodersError, match=r"unknown neuron id 's0-n99' in session 's0'"):
        fit(tmp_path, data, [Products([MEIs(neurons=["s0/s0-n99"], method=GA)])])
    assert not (tmp_path / "checkpoints").exists()


def test_product_settings_are_checked_when_made():
    with pytest.raises(EncodersError, match="SESSION/NEURON_ID"):
        MEIs(neurons=["s0-n1"])
    with pytest.raises(EncodersError, match="not both"):
        MEIs(neurons=["s0/s0-n1"], top_k=2)
    with pytest.raises(EncodersError, match="kind: must be one of"):
        MEIs(top_k=1, kind="best")
    with pytest.raises(EncodersError, match="meni .* contrast: null"):
        MEIs(top_k=1, kind="meni")  # GA images are not naturalistic
    with pytest.raises(EncodersError, match="meni .* contrast: null"):
        MEIs(top_k=1, kind="meni", method=EGGSettings(prior=PRIOR))  # at the GA contrast
    # the kind names the file: inhibitory images are "mii" whichever of the two says so
    assert MEIs(top_k=1, minimize=True).stem() == "mii_ga" and MEIs(top_k=1, kind="mii").minimize
    with pytest.raises(EncodersError, match="target must be one of"):
        Reconstructions(target="imagined")
    with pytest.raises(EncodersError, match="checkpoints must be one of"):
        Products([MEIs(top_k=1)], checkpoints="every")
    with pytest.raises(EncodersError, match="the same file"):
        Products([MEIs(top_k=1), MEIs(top_k=2)])


def test_best_seed_is_the_seed_of_the_best_activation():
    transform = ImageTransform(mean=120.0, std=60.0)
    images = torch.zeros(2 * 3, 1, 4, 4)
    rates = torch.tensor([[1.0, 3.0, 2.0], [float("nan"), 0.5, 0.7]])  # a NaN sample is never the best
    for minimize, expected in ((False, [5, 9]), (True, [3, 5])):
        data = mei_dataset("ga", [("s0", "a"), ("s0", "b")], [3, 5, 9], images, rates.flatten(), torch.zeros(2, 6),
                           transform, minimize)
        assert data.best_seed.values.tolist() == [expected]


def test_failed_samples_below_half_of_the_neurons_best_seed():
    activation = np.array([[10.0, 4.9, 5.0, 6.0], [2.0, 2.0, 2.0, 0.9], [3.0, np.nan, 1.0, 3.0]])
    np.testing.assert_array_equal(failed_samples(activation), [
        [False, True, False, False],  # 5.0 is exactly half: not below
        [False, False, False, True],
        [False, True, True, False],  # NaN: diverged, failed
    ])
    assert FAILED_FRACTION == 0.5
    # inhibitory images: lower is better; failed = more than twice the lowest rate
    np.testing.assert_array_equal(failed_samples(np.array([[1.0, 2.0, 2.1]]), minimize=True), [[False, False, True]])
    assert failed_samples(np.full((1, 2), np.nan)).all()


def test_mei_grid_marks_failed_samples():
    transform = ImageTransform(mean=120.0, std=60.0)
    rates = torch.tensor([[10.0, 4.0, 6.0], [2.0, 2.0, 0.9]])
    data = mei_dataset("ga", [("s0", "a"), ("s0", "b")], [0, 1, 2], torch.randn(6, 1, 4, 4), rates.flatten(),
                       torch.zeros(2, 6), transform)
    data.attrs["minimize"] = 0
    figure = mei_figure(data)
    try:
        axes = np.array(figure.axes).reshape(2, 3)
        marked = [[("FAILED" in ax.get_title()) for ax in row] for row in axes]
        assert marked == [[False, True, False], [False, False, True]]
        for ax, failed in zip(axes.flat, np.array(marked).flat):
            assert (ax.spines["left"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)) == failed  # a red frame
        assert "failed" in figure.get_suptitle()
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)


def test_cli_mei_and_reconstruct(run, data, tmp_path):
    root, trainer, _ = run
    best, last = trainer.checkpoint_callback.best_model_path, trainer.checkpoint_callback.last_model_path
    out = tmp_path / "ensemble"
    code = main(["mei", best, last, "--neurons", "[s1/s1-n2, s0/s0-n0]", "--out", str(out), "--method.steps", "3",
                 "--method.seeds", "[4]"])
    assert code == 0
    with xr.open_dataset(out / "mei_ga.nc") as meis:
        assert meis.neuron_id.values.tolist() == ["s1-n2", "s0-n0"] and meis.seed.values.tolist() == [4]
        assert meis.attrs["checkpoint"] == [best, last]  # an ensemble of both, in order
        request = MEIs(neurons=["s1/s1-n2", "s0/s0-n0"], method=GASettings(seeds=(4,), steps=3)).request(
            load_models([best, last]), ProductData())
        assert meis.attrs["fingerprint"] == fingerprint([best, last], request)
    code = main(["reconstruct", last, "--data", str(data), "--sessions", "[s0]", "--images", "3", "--out", str(out),
                 "--method.steps", "3", "--target", "predicted", "--metric", "correlation"])
    assert code == 0
    with xr.open_dataset(out / "reconstruction_ga.nc") as recon:
        assert recon.sizes["image"] == 3 and recon.attrs["target"] == "predicted" and recon.attrs["metric"] == "correlation"
        assert set(recon.session.values) == {"s0"} and recon.attrs["ga_steps"] == 3
        # one option changed: the others keep the product's defaults (blur 2, contrast 1)
        assert recon.attrs["ga_blur_sigma"] == 2.0 and recon.attrs["ga_contrast"] == 1.0


def test_reconstructions_stop_at_given_energies(run, data):
    """compute_reconstructions(stop_below=...): each reconstruction stops once below its own threshold (the EGG
    paper's GD stops at EGG's loss); the file keeps each one's final energy."""
    from encoders.datasets.recording import Recording
    from encoders.products.reconstructions import compute_reconstructions

    _, trainer, _ = run
    model = load_models([trainer.checkpoint_callback.last_model_path])
    recording = Recording.for_model(str(data), model)
    chosen = {"s0": [0, 1]}
    method = GASettings(seeds=(0, 1), steps=12, contrast=1.0)
    free = compute_reconstructions(model, recording, chosen, method, "predicted", "mse")
    assert free.energy.shape == (1, 2, 2) and np.isfinite(free.energy).all()
    threshold = free.trace.isel(method=0, step=3).values + 1e-9  # reached after 3 of 12 steps
    stopped = compute_reconstructions(model, recording, chosen, method, "predicted", "mse",
                                      stop_below=torch.as_tensor(threshold, dtype=torch.float32))
    assert (stopped.energy.isel(method=0).values < threshold).all()
    before, after = free.trace.isel(method=0).values, stopped.trace.isel(method=0).values  # (step, image, seed)
    first = (before < threshold).argmax(0)  # the step each one first got below: <= 3
    for i, j in np.ndindex(first.shape):
        t = first[i, j]
        np.testing.assert_allclose(after[: t + 1, i, j], before[: t + 1, i, j])  # the same run until there ...
        np.testing.assert_allclose(after[t:, i, j], before[t, i, j], rtol=1e-6)  # ... then it stays
    with pytest.raises(EncodersError, match="stop_below must be"):
        compute_reconstructions(model, recording, chosen, method, "predicted", "mse", stop_below=torch.zeros(3))


def egg_method(**options) -> str:
    init = ", ".join(f"{k}: {v}" for k, v in {"prior": PRIOR, "num_steps": 3, "seeds": "[0, 1]", **options}.items())
    return f"{{class_path: encoders.synthesis.EGGSettings, init_args: {{{init}}}}}"


def test_cli_egg_meis_menis_and_reconstructions_sit_beside_ga(run, data, tmp_path):
    _, trainer, _ = run
    last = trainer.checkpoint_callback.last_model_path
    out = tmp_path / "egg"
    assert main(["mei", last, "--neurons", "[s0/s0-n1, s1/s1-n0]", "--out", str(out), "--method", egg_method()]) == 0
    assert main(["mei", last, "--neurons", "[s0/s0-n1]", "--out", str(out), "--kind", "meni",
                 "--method", egg_method(energy_scale=0.015625, contrast="null")]) == 0  # weaker guidance
    assert main(["reconstruct", last, "--data", str(data), "--sessions", "[s1]", "--images", "2", "--out", str(out),
                 "--method", egg_method(contrast="null")]) == 0
    with xr.open_dataset(out / "mei_egg.nc") as meis:
        assert meis.method.values.tolist() == ["egg"] and meis.image.shape == (1, 2, 2, 1, 16, 16)
        # the default guidance: a step of L2 length 2 on the 1x32x32 prior, 0.0625 per pixel
        assert meis.attrs["egg_num_steps"] == 3 and meis.attrs["egg_energy_scale_per_pixel"] == 0.0625
        assert EGGSettings(prior=PRIOR).step_length((1, 32, 32)) == 2.0
        assert meis.attrs["egg_guide_norm"] == meis.attrs["egg_norm"]  # guided at the norm it is kept at
        norms = np.sqrt((meis.image.values ** 2).sum(axis=(-3, -2, -1)))
        np.testing.assert_allclose(norms, 0.25 * 16, rtol=1e-4)  # rescaled to the GA norm rule
        assert meis.best_seed.shape == (1, 2)
    with xr.open_dataset(out / "meni_egg.nc") as menis:
        assert menis.attrs["product"] == "most exciting naturalistic images" and menis.attrs["egg_energy_scale_per_pixel"] == 0.015625
        assert np.isnan(menis.attrs["egg_norm"]) and np.isnan(menis.attrs["egg_guide_norm"])  # the prior's own contrast
    with xr.open_dataset(out / "reconstruction_egg.nc") as recon:
        assert recon.method.values.tolist() == ["egg"] and recon.reconstruction.shape == (1, 2, 2, 1, 16, 16)
        assert recon.sizes["step"] == 3 and np.isfinite(recon.correlation).all()
    for name in ("mei_egg.png", "meni_egg.png", "reconstruction_egg.png"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["mei", "{ckpt}", "--neurons", "[s0/s0-n0]", "--method", "{{class_path: encoders.synthesis.EGGSettings}}"],
     "required: prior"),
    (["mei", "{ckpt}", "--neurons", "[s0/s0-n0]", "--kind", "meni"], "meni (most exciting naturalistic images) is EGG"),
    # an EGG option without choosing EGG: the default method (GA) has no such option
    (["mei", "{ckpt}", "--neurons", "[s0/s0-n0]", "--method.num_steps", "3"], "--method.num_steps: not an option of GASettings"),
    (["mei", "{ckpt}", "--neurons", "[s0/s0-n0]", "--method",
      "{{class_path: encoders.synthesis.EGGSettings, init_args: {{prior: {data}}}}}"], "diffusion prior folder not found"),
    (["mei", "{ckpt}", "--neurons", "[s0/s0-n0, s0/bogus]"], "unknown neuron id 'bogus' in session 's0'"),
    (["mei", "{ckpt}", "--neurons", "[s7/s0-n0]"], "unknown session 's7'; the model has sessions [s0, s1]"),
    (["mei", "{ckpt}", "--top_k", "2"], "top_k needs data"),
    (["reconstruct", "{ckpt}", "--data", "{data}", "--sessions", "[s9]"], "unknown session 's9'"),
])
def test_cli_unknown_ids_exit_2_before_any_work(run, data, tmp_path, capsys, argv, message):
    _, trainer, _ = run
    out = tmp_path / "out"
    argv = [a.format(ckpt=trainer.checkpoint_callback.last_model_path, data=data) for a in argv]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_ground_truth_scores_on_a_tiny_twin(tmp_path):
    sessions, truth = make_twin(n_sessions=1, neurons_per_session=3, images_per_session=60, image_size=16, seed=0)
    path = tmp_path / "twin.h5"
    write_dataset(path, sessions, ground_truth=truth.state_arrays())
    datamodule = RecordedDataModule(str(path))
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = Encoder(core=CORE, readout=READOUT, sessions=datamodule.session_info(), input_shape=list(datamodule.input_shape()),
                    transform=datamodule.transform.state()).eval()
    settings = GASettings(seeds=(0, 1), steps=15, batch_size=4)
    product = MEIs(neurons=["twin0/twin0-n002", "twin0/twin0-n000"], method=settings)
    [made] = make_products([product], [], model, ProductData.of(datamodule), tmp_path / "out")
    assert made.how == "made" and made.path == tmp_path / "out" / "mei_ga.nc" and "true neurons" in made.line
    with xr.open_dataset(made.path) as meis:
        for name in ("ground_truth_activation", "ground_truth_relative_activation", "ground_truth_relative_drive", "true_mei_correlation",
                     "true_mei_feature_correlation", "same_seed_true_mei_correlation",
                     "same_seed_true_mei_feature_correlation"):
            assert meis[name].dims == ("method", "neuron", "seed") and np.isfinite(meis[name]).all()
        for name in ("true_mei_self_correlation", "true_mei_self_feature_correlation"):
            assert meis[name].dims == ("neuron",) and (np.abs(meis[name]) <= 1).all()
        assert (np.abs(meis.true_mei_feature_correlation) <= 1 + 1e-6).all()
        # at the seed THE true MEI was grown from, same-seed and best-true-MEI scores coincide
        at_best = (meis.seed == meis.true_mei_seed).transpose("neuron", "seed").values
        for kind in ("", "feature_"):
            same_seed = meis[f"same_seed_true_mei_{kind}correlation"].isel(method=0).values
            np.testing.assert_allclose(same_seed[at_best], meis[f"true_mei_{kind}correlation"].isel(method=0).values[at_best], atol=1e-5)
        assert meis.true_mei.dims == ("neuron", "channel", "y", "x") and meis.true_mei.shape == (2, 1, 16, 16)
        assert (meis.ground_truth_activation > 0).all()
        relative = meis.ground_truth_relative_activation.values
        np.testing.assert_allclose(relative, meis.ground_truth_activation.values / meis.true_mei_activation.values[None, :, None])
        # the true MEI, scored like the model's MEIs, gives the stored reference (columns 2 and 0)
        geometry = datamodule.twin.geometry(model)
        energy = GroundTruthActivation(truth, torch.tensor([2, 0]), geometry)
        with torch.no_grad():
            rates = energy.activation(torch.as_tensor(meis.true_mei.values))
        np.testing.assert_allclose(rates.numpy(), meis.true_mei_activation.values, rtol=1e-4)
        # and it beats noise images of the same norm for the true neuron
        noise = torch.randn(8, 1, 16, 16)
        noise = noise * (settings.image_norm((1, 16, 16)) / noise.flatten(1).norm(dim=1))[:, None, None, None]
        with torch.no_grad():
            noise_rates = GroundTruthActivation(truth, torch.tensor([2] * 8), geometry).activation(noise)
        assert meis.true_mei_activation.values[0] > noise_rates.max().item()


def test_kept_checkpoints_choices(run):
    _, trainer, _ = run
    best, last = Path(trainer.checkpoint_callback.best_model_path), Path(trainer.checkpoint_callback.last_model_path)
    assert kept_checkpoints(trainer, "best") == [best]
    assert kept_checkpoints(trainer, "last") == [last]
    assert kept_checkpoints(trainer, "best_and_last") == [best, last]
    assert kept_checkpoints(trainer, "all") == [best, last]  # one epoch: one top-k file, then last
    with pytest.raises(EncodersError, match="checkpoints must be one of"):
        kept_checkpoints(trainer, "every")


def test_products_reach_a_real_offline_wandb_run(tmp_path, data):
    from pytorch_lightning.loggers import WandbLogger

    pl.seed_everything(0)
    logger = WandbLogger(project="encoders-test", save_dir=str(tmp_path), offline=True)
    trainer = pl.Trainer(
        max_epochs=1, logger=logger, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, monitor="val/correlation", mode="max"),
                   Products([MEIs(top_k=2, method=GASettings(seeds=(0,), steps=2))])],
    )
    trainer.fit(EncodingModel(core=CORE, readout=READOUT), RecordedDataModule(str(data), batch_size=16))
    logger.experiment.finish()
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    images = list((run_dirs[0] / "files" / "media" / "images").rglob("*.png"))
    # one MEI grid per kept checkpoint; best = last here, so its copy is logged under both names
    assert len(images) == 2 and all(p.stat().st_size > 1000 for p in images)
    best = Path(trainer.checkpoint_callback.best_model_path).stem
    assert {p.parent.name for p in images} == {best, "last"} and all(p.name.startswith("mei_ga") for p in images)


def test_a_products_fingerprint_reads_every_constructor_argument():
    """request() is the product's recorded arguments (its method by its own record): a new setting cannot be left out."""
    import inspect

    from encoders.products import Reconstructions, SimilarityDiagnostics

    from types import SimpleNamespace

    model = SimpleNamespace(input_shape=(1, 16, 16))
    for product in (MEIs(top_k=2), SimilarityDiagnostics()):
        names = [p for p in inspect.signature(type(product).__init__).parameters if p != "self"]
        assert sorted(product.arguments) == sorted(names) and set(names) <= set(product.request(model, ProductData()))
    assert sorted(Reconstructions(images=2).arguments) == ["images", "method", "metric", "sessions", "target"]
    a, b = MEIs(top_k=2, method=GASettings(steps=3)), MEIs(top_k=2, method=GASettings(steps=4))
    assert a.request(model, ProductData())["method"]["ga_steps"] == 3
    assert fingerprint([], a.request(model, ProductData())) != fingerprint([], b.request(model, ProductData()))
