"""Energies and gradient descent on pixels: norm, gradient blur, batching, MEIs, inhibitory images, reconstructions."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.datasets.transforms import ImageTransform
from encoders.encoder import Encoder
from encoders.ensemble import Ensemble
from encoders.errors import EncodersError
from encoders.metrics import correlation
from encoders.readouts import GaussianReadout
from encoders.synthesis import (
    GASettings,
    NeuronActivation,
    ResponseDistance,
    all_targets,
    default_norm,
    gaussian_blur,
    optimize_images,
    optimize_in_batches,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: thread start-up dominates on 2 shared cores
SHAPE = (1, 16, 16)
NORM = default_norm(SHAPE)  # 0.25 * 16 = 4


def tiny_model(seed: int = 0, readout: str = "attention") -> Encoder:
    """A random-weight model of two sessions (5 and 4 neurons) on 1x16x16 images, eval mode."""
    torch.manual_seed(seed)
    sessions = {
        s: {"neuron_ids": [f"{s}-n{i}" for i in range(n)], "mean_response": [2.0] * n, "n_train": 50}
        for s, n in (("s0", 5), ("s1", 4))
    }
    model = Encoder(
        core={"type": "stacked", "hidden_channels": 8, "layers": 2, "input_kernel": 5, "hidden_kernel": 3},
        readout={"type": "attention", "embed_dim": 8, "heads": 2, "dropout": 0.0} if readout == "attention" else {"type": readout},
        sessions=sessions, input_shape=list(SHAPE), transform=ImageTransform(mean=120.0, std=60.0).state(),
    )
    with torch.no_grad():  # the initial readout weights barely modulate the rates; make neurons selective
        for readout in model.readouts.values():
            if isinstance(readout, GaussianReadout):  # drawn in its earlier (F, neurons) layout: the neurons the thresholds were set on
                readout.features.copy_(torch.randn(readout.features.shape[::-1]).T)
            else:
                readout.features.normal_(0.0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> Encoder:
    return tiny_model()


@pytest.fixture(scope="module")
def selective_model() -> Encoder:
    """Random attention readouts pool over all positions, which flattens tuning; a Gaussian readout keeps it."""
    return tiny_model(readout="gaussian")


def random_rates(model, targets, n_seeds: int = 16) -> torch.Tensor:
    """Rates of each target neuron to norm-matched noise images, (seeds, targets)."""
    out = []
    for seed in range(1000, 1000 + n_seeds):
        result = optimize_images(NeuronActivation(model, targets), len(targets), SHAPE, seed, steps=0, norm=NORM)
        out.append(-result.energy)
    return torch.stack(out)


def test_default_norm_rule():
    assert default_norm((1, 100, 100)) == pytest.approx(25.0)  # the paper's value
    assert default_norm((3, 40, 40)) == pytest.approx(0.25 * math.sqrt(3 * 40 * 40))
    assert default_norm((1, 10, 10), contrast=1.0) == pytest.approx(10.0)


def test_norm_holds_after_every_step(model):
    targets = all_targets(model)
    for optimizer, lr in (("sgd", 0.05), ("adamw", 0.1)):
        result = optimize_images(
            NeuronActivation(model, targets), len(targets), SHAPE, seeds=0, steps=6, optimizer=optimizer, lr=lr,
            blur_sigma=1.0, norm=NORM,
        )
        assert result.norm_trace.shape == (6, len(targets))
        torch.testing.assert_close(result.norm_trace, torch.full((6, len(targets)), NORM), rtol=1e-5, atol=0)
        torch.testing.assert_close(result.images.flatten(1).norm(dim=1), torch.full((len(targets),), NORM), rtol=1e-5, atol=0)


def test_clamp_keeps_pixels_in_range(model):
    targets = all_targets(model)[:3]
    result = optimize_images(NeuronActivation(model, targets), 3, SHAPE, 0, 5, norm=30.0, pixel_range=(-1.0, 1.5))
    assert result.images.min() >= -1.0 and result.images.max() <= 1.5
    assert (result.norm_trace <= 30.0 + 1e-4).all()  # after a clamp the norm is an upper bound


def test_blur_acts_on_the_gradient_not_the_image():
    """A linear energy whose gradient is a delta: one SGD step adds a Gaussian blob to unblurred noise."""
    weight = torch.zeros(1, 1, 21, 21)
    weight[0, 0, 10, 10] = 1.0
    sigma, lr = 2.0, 3.0
    start = optimize_images(lambda x: -(x * weight).flatten(1).sum(1), 1, (1, 21, 21), 7, steps=0).images
    after = optimize_images(
        lambda x: -(x * weight).flatten(1).sum(1), 1, (1, 21, 21), 7, steps=1, lr=lr, blur_sigma=sigma,
        normalize_gradient=False,
    ).images
    step = (after - start)[0, 0]
    y, x = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    blob = torch.exp(-((y - 10) ** 2 + (x - 10) ** 2) / (2 * sigma**2))
    blob[((y - 10).abs() > 3 * sigma) | ((x - 10).abs() > 3 * sigma)] = 0  # the kernel's support: 3 sigma
    blob = lr * blob / blob.sum()
    torch.testing.assert_close(step, blob, atol=1e-6, rtol=1e-4)
    assert step.argmax() == 10 * 21 + 10 and step[10, 10] < 0.1 * lr  # spread out, not a delta
    # and the image itself keeps its pixel noise: no blur was applied to it
    assert (after[0, 0] - gaussian_blur(after, sigma)[0, 0]).abs().max() > 0.5


def test_blurred_parametrization_blurs_the_image_itself():
    """parametrization="blurred" (the paper's GD reconstructions): the image is blur(p) at the norm, computed in the
    forward pass, so it is smooth where the pixel parametrization keeps its noise; the energy still falls."""
    target = torch.zeros(2, 1, 21, 21)
    target[:, :, 5:15, 5:15] = 1.0

    def energy(x):
        return (x - target).pow(2).mean((1, 2, 3))

    start = optimize_images(energy, 2, (1, 21, 21), [3, 4], steps=0, parametrization="blurred", norm=5.0).images
    result = optimize_images(energy, 2, (1, 21, 21), [3, 4], steps=200, optimizer="adamw", lr=0.05, blur_sigma=1.0,
                             norm=5.0, normalize_gradient=False, parametrization="blurred")
    torch.testing.assert_close(result.images.flatten(1).norm(dim=1), torch.full((2,), 5.0))
    assert (result.energy < 0.5 * result.trace[0]).all()
    # blurred: the pixel-to-pixel roughness of blurred noise, not of white noise
    rough = lambda x: (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
    assert rough(result.images) < 0.6 and rough(start) > rough(result.images)
    with pytest.raises(EncodersError, match="parametrization"):
        optimize_images(energy, 2, (1, 21, 21), 0, steps=1, parametrization="latent")


def test_images_stop_once_below_their_threshold():
    """stop_below: each image freezes at the first step that starts below its threshold (the EGG paper's GD
    reconstructions stop at EGG's loss); the others go on; no threshold = every step for every image."""
    target = torch.zeros(3, 1, 12, 12)
    target[:, :, 3:9, 3:9] = 1.0

    def energy(x):
        return (x - target).pow(2).mean((1, 2, 3))

    for parametrization in ("pixels", "blurred"):
        free = optimize_images(energy, 3, (1, 12, 12), [0, 1, 2], steps=60, optimizer="adamw", lr=0.05, norm=4.0,
                               normalize_gradient=False, parametrization=parametrization)
        stop = torch.tensor([float("inf"), float(free.trace[20, 1]), -float("inf")])  # at once, midway, never
        stopped = optimize_images(energy, 3, (1, 12, 12), [0, 1, 2], steps=60, optimizer="adamw", lr=0.05, norm=4.0,
                                  normalize_gradient=False, parametrization=parametrization, stop_below=stop)
        assert (stopped.trace[:, 0] == stopped.trace[0, 0]).all()  # image 0 never moved
        assert stopped.energy[1] < stop[1] and stopped.energy[1] > free.energy[1]  # image 1 stopped on the way
        assert (stopped.trace[-5:, 1] == stopped.energy[1]).all()  # ... and stayed there
        torch.testing.assert_close(stopped.images[2], free.images[2])  # image 2 ran every step, unaffected
        done = optimize_images(energy, 3, (1, 12, 12), [0, 1, 2], steps=60, norm=4.0, parametrization=parametrization,
                               stop_below=torch.full((3,), float("inf")))  # all stop at once: the loop ends there
        assert (done.trace == done.trace[0]).all() and torch.allclose(done.energy, done.trace[0])
    with pytest.raises(EncodersError, match="stop_below"):
        optimize_images(energy, 3, (1, 12, 12), 0, steps=1, stop_below=torch.zeros(2))


def test_normalized_gradient_steps_move_pixels_by_lr():
    """With normalize_gradient, one SGD step has RMS lr whatever the energy's scale."""
    for scale in (1e-3, 1.0, 1e3):
        start = optimize_images(lambda x: scale * x.pow(3).sum((1, 2, 3)), 2, (1, 8, 8), [1, 2], steps=0).images
        after = optimize_images(lambda x: scale * x.pow(3).sum((1, 2, 3)), 2, (1, 8, 8), [1, 2], steps=1, lr=0.1,
                                blur_sigma=0.0).images
        rms = (after - start).flatten(1).pow(2).mean(1).sqrt()
        torch.testing.assert_close(rms, torch.full((2,), 0.1), rtol=1e-4, atol=0)


def test_batched_run_equals_single_runs(model):
    """Image b depends only on its own seed and target: batching over neurons and seeds changes nothing."""
    targets = [("s1", "s1-n2"), ("s0", "s0-n0"), ("s0", "s0-n3"), ("s1", "s1-n0"), ("s0", "s0-n0")]
    seeds = [3, 5, 7, 9, 11]
    settings = dict(steps=15, optimizer="sgd", lr=0.05, blur_sigma=1.0, norm=NORM, pixel_range=(-2.0, 2.2))
    batched = optimize_images(NeuronActivation(model, targets), len(targets), SHAPE, seeds, **settings)
    for b, (target, seed) in enumerate(zip(targets, seeds)):
        single = optimize_images(NeuronActivation(model, [target]), 1, SHAPE, [seed], **settings)
        torch.testing.assert_close(batched.images[b], single.images[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(batched.energy[b], single.energy[0], atol=1e-5, rtol=1e-5)
    again = optimize_images(NeuronActivation(model, targets), len(targets), SHAPE, seeds, **settings)
    assert torch.equal(again.images, batched.images)  # deterministic

    chunked = optimize_in_batches(
        lambda index: NeuronActivation(model, [targets[i] for i in index]), seeds, SHAPE,
        GASettings(steps=15, lr=0.05, blur_sigma=1.0, norm=NORM, clamp=False, batch_size=2), None,
    )
    unclamped = optimize_images(NeuronActivation(model, targets), len(targets), SHAPE, seeds, 15, "sgd", 0.05, 1.0, NORM)
    torch.testing.assert_close(chunked.images, unclamped.images, atol=1e-6, rtol=0)


def test_synthesize_runs_ga_in_chunks_of_batch_size(model):
    """`method.synthesize` (the one path of every product) equals one GA batch, and reports each chunk's progress."""
    targets = [("s1", "s1-n2"), ("s0", "s0-n0"), ("s0", "s0-n3")]
    seeds = [3, 5, 7]
    settings = GASettings(steps=5, lr=0.05, blur_sigma=1.0, batch_size=2)
    done = []
    result = settings.synthesize(lambda index: NeuronActivation(model, [targets[i] for i in index]), seeds, model, done.append)
    whole = optimize_images(NeuronActivation(model, targets), 3, SHAPE, seeds, steps=5, lr=0.05, blur_sigma=1.0, norm=NORM,
                            pixel_range=settings.pixel_range(model.image_transform))
    assert done == [2, 1] and result.trace.shape == (5, 3)
    torch.testing.assert_close(result.images, whole.images, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.energy, whole.energy, atol=1e-5, rtol=1e-5)


def test_meis_drive_their_neuron_far_above_noise(selective_model):
    model = selective_model
    targets = all_targets(model)
    result = optimize_images(NeuronActivation(model, targets), len(targets), SHAPE, 0, 40, "sgd", 0.05, 1.0, NORM)
    mei = -result.energy
    noise = random_rates(model, targets)
    assert (mei > noise.max(0).values).all()
    # "well above": many times the spread of responses to noise images of the same norm
    assert ((mei - noise.mean(0)) > 5 * noise.std(0)).all()
    assert mei.mean() > 1.3 * noise.mean()
    assert (-result.trace[-1] >= -result.trace[0]).all()  # the trace records the ascent


def test_inhibitory_images_lower_the_response(selective_model):
    model = selective_model
    targets = all_targets(model)
    result = optimize_images(NeuronActivation(model, targets, minimize=True), len(targets), SHAPE, 0, 40, "sgd", 0.05, 1.0, NORM)
    noise = random_rates(model, targets)
    assert (result.energy < noise.min(0).values).all()  # energy = +rate when minimising
    assert ((noise.mean(0) - result.energy) > 5 * noise.std(0)).all()
    assert result.energy.mean() < 0.7 * noise.mean()


def test_reconstruction_of_predicted_responses(selective_model):
    model = selective_model
    norm = 4 * NORM  # contrast 1, like z-scored natural images (the reconstruction callbacks' default)
    test_images = optimize_images(lambda x: x.sum((1, 2, 3)), 4, SHAPE, [21, 22, 23, 24], steps=0, norm=norm).images
    test_images = gaussian_blur(test_images, 1.5)  # smooth, natural-ish targets
    with torch.no_grad():
        wanted = model(test_images, "s0")
    for metric in ("mse", "correlation"):
        energy = ResponseDistance(model, "s0", wanted, metric)
        start = optimize_images(energy, 4, SHAPE, 0, 0, norm=norm)
        result = optimize_images(energy, 4, SHAPE, 0, 60, "sgd", 0.05, 1.0, norm)
        with torch.no_grad():
            r_random = correlation(model(start.images, "s0"), wanted, dim=1)
            r_recon = correlation(model(result.images, "s0"), wanted, dim=1)
        assert (r_recon > r_random).all(), metric
        assert (result.energy < start.energy).all()
        assert result.energy.mean() < 0.25 * start.energy.mean(), metric
        assert r_recon.mean() > (0.9 if metric == "correlation" else 0.6), metric


def test_response_distance_values(model):
    images = torch.randn(2, *SHAPE)
    with torch.no_grad():
        predicted = model(images, "s1")
        target = predicted.clone()
        target[1] = 2 * predicted[1] + 1  # same pattern, other gain
        mse = ResponseDistance(model, "s1", target, "mse")(images)
        corr = ResponseDistance(model, "s1", target, "correlation")(images)
    assert mse[0] == pytest.approx(0.0, abs=1e-6) and mse[1] > 0
    torch.testing.assert_close(corr, torch.zeros(2), atol=1e-5, rtol=0)
    with pytest.raises(EncodersError, match="metric"):
        ResponseDistance(model, "s1", target, "cosine")
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        ResponseDistance(model, "s1", torch.zeros(2, 5))


def test_unknown_ids_are_named_before_any_work(model):
    with pytest.raises(EncodersError, match=r"unknown session 'nope'.*s0, s1"):
        NeuronActivation(model, [("s0", "s0-n0"), ("nope", "x")])
    with pytest.raises(EncodersError, match=r"unknown neuron id 's0-n9' in session 's0'.*s0-n0"):
        NeuronActivation(model, [("s0", "s0-n9")])
    with pytest.raises(EncodersError, match="unknown session 'zz'"):
        ResponseDistance(model, "zz", torch.zeros(1, 5))
    with pytest.raises(EncodersError, match="optimizer"):
        optimize_images(NeuronActivation(model, [("s0", "s0-n0")]), 1, SHAPE, 0, 1, optimizer="lbfgs")


def test_energies_work_on_an_ensemble(model):
    ensemble = Ensemble([model, tiny_model(seed=1)]).eval()
    targets = [("s0", "s0-n1"), ("s1", "s1-n3")]
    images = torch.randn(2, *SHAPE)
    with torch.no_grad():
        energy = NeuronActivation(ensemble, targets)(images)
        expected = torch.stack([
            torch.stack([m(images[:1], "s0")[0, 1] for m in ensemble.members]).mean(),
            torch.stack([m(images[1:], "s1")[0, 3] for m in ensemble.members]).mean(),
        ])
    torch.testing.assert_close(energy, -expected)
    result = optimize_images(NeuronActivation(ensemble, targets), 2, SHAPE, 0, 3, norm=NORM)
    assert torch.isfinite(result.images).all()


def test_methods_record_their_settings_once():
    """Every constructor argument is recorded (`config`) and read by equality, `replace`, attributes and the store key;
    presets are the same method with other defaults, named in the files."""
    from encoders.synthesis import EGGRebuttal, EGGSettings, GARebuttal

    ga = GASettings(seeds=[1, 2], steps=3)
    assert ga.config["seeds"] == (1, 2) and ga.config["steps"] == 3 and ga.settings == ga.config and set(ga.config) == {
        "seeds", "steps", "optimizer", "lr", "normalize_gradient", "lr_pixels", "blur_sigma", "contrast", "norm", "clamp",
        "batch_size", "schedule"}
    assert ga == GASettings(seeds=(1, 2), steps=3) and hash(ga) == hash(GASettings(seeds=(1, 2), steps=3))
    assert ga.replace(lr=0.1).lr == 0.1 and ga.replace(lr=0.1) != ga and ga.lr == 0.05
    with pytest.raises(AttributeError):
        ga.steps = 4  # settings are recorded once: change them with replace
    with pytest.raises(EncodersError, match="num_steps"):
        ga.replace(num_steps=4)
    attrs = ga.attrs(SHAPE)
    assert attrs["ga_steps"] == 3 and attrs["ga_norm"] == NORM and attrs["ga_class"] == "GASettings"
    assert set(ga.key(SHAPE)) >= {f"ga_{name}" for name in ga.config}  # no setting can be left out of the cache key
    paper = GARebuttal(seeds=(0, 1))
    assert paper.steps == 1000 and paper.optimizer == "adamw" and not paper.clamp and paper.attrs(SHAPE)["ga_class"] == "GARebuttal"
    assert paper.replace(contrast=0.3).contrast == 0.3 and type(paper.replace(contrast=0.3)) is GARebuttal
    assert set(paper.config) == {"seeds", "contrast", "batch_size"} and paper.settings["lr"] == 10.0
    with pytest.raises(EncodersError, match="preset that fixes"):
        paper.replace(steps=10)
    egg = EGGRebuttal(prior="p")
    assert egg.num_steps == 100 and not egg.clip_denoised and egg.name == "egg" and isinstance(egg, EGGSettings)
    assert math.isnan(EGGSettings(prior="p", contrast=None).attrs(SHAPE)["egg_guide_norm"])  # guided at the prior's contrast
