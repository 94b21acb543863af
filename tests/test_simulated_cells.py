"""Simulated cells with known invariances: the contract, each cell's (in)variances, the Gabor fit, and MEIs on them."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.errors import EncodersError
from encoders.contract import ResponseModel, device_of
from encoders.datasets.transforms import ImageTransform
from encoders.metrics import correlation
from encoders.simulated import INVARIANT_TO, KINDS, SimulatedCells, fit_phase_orientation, gabor
from encoders.synthesis import GASettings, NeuronActivation, all_targets, default_norm

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: thread start-up dominates on 2 shared cores
S = "simulated"
SHAPE = (1, 32, 32)
NORM = default_norm(SHAPE)  # 0.25 * 32 = 8: the contrast every product uses
FREQUENCY, SIGMA = 0.125, 4.0  # the cells' defaults
PHASES = torch.arange(0.0, 360.0, 15.0)
ORIENTATIONS = torch.arange(0.0, 180.0, 3.75)


@pytest.fixture(scope="module")
def cells() -> SimulatedCells:
    return SimulatedCells()


def rates(cells: SimulatedCells, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each cell's rates (..., ) to images (..., 1, H, W), by neuron id."""
    with torch.no_grad():
        out = cells(images.reshape(-1, *images.shape[-3:]), S).view(*images.shape[:-3], -1)
    return {n: out[..., i] for i, n in enumerate(cells.neuron_ids(S))}


def gabors(cells: SimulatedCells, orientation, phase) -> torch.Tensor:
    """Gabors of the cells' frequency and sigma at the default image norm, (*S, 1, 32, 32)."""
    return cells.preferred_gabor("simple", orientation=orientation, phase=phase) * NORM


def circular(a: torch.Tensor, b: torch.Tensor | float, period: float) -> torch.Tensor:
    """|a - b| on a circle of `period` degrees."""
    return ((a - b + period / 2) % period - period / 2).abs()


def phase_error(fit, orientation: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """|fitted - true phase| of Gabors, degrees. Orientation o with phase p is the same image as o + 180 with
    phase -p: where a fit lands across the end of its orientation range from the truth, its phase is negated."""
    same = circular(fit.orientation, orientation, 360.0) < 90
    return circular(torch.where(same, fit.phase, -fit.phase), phase, 360.0)


def test_cells_satisfy_the_response_model_contract(cells):
    assert isinstance(cells, ResponseModel)
    assert cells.sessions == [S] and cells.neuron_ids(S) == list(KINDS)
    assert cells.input_shape == SHAPE and device_of(cells) == torch.device("cpu")
    assert isinstance(cells.image_transform, ImageTransform)
    low, high = cells.image_transform.from_pixels(torch.tensor([0.0, 255.0])).tolist()
    assert low == pytest.approx(-2.0) and high == pytest.approx(127 / 64)  # z-scored pixels: about -2..2
    assert sum(p.numel() for p in cells.parameters()) == 0  # weight-free
    assert cells.invariant_to("complex") == ("phase",) and cells.invariant_to("simple") == ()
    assert set(INVARIANT_TO) == set(KINDS)
    with pytest.raises(KeyError, match="unknown session"):
        cells(torch.zeros(1, *SHAPE), "s0")
    with pytest.raises(ValueError, match="images must be"):
        cells(torch.zeros(1, 1, 16, 16), S)

    several = SimulatedCells(["simple", "complex", "simple"], size=20, orientation=[0.0, 30.0, 90.0])
    assert several.neuron_ids(S) == ["simple-0", "complex", "simple-1"] and several.input_shape == (1, 20, 20)
    assert isinstance(several, ResponseModel)
    assert several(torch.randn(3, 1, 20, 20), S).shape == (3, 3)
    with pytest.raises(EncodersError, match="unknown neuron kinds"):
        SimulatedCells(["hypercomplex"])


def test_rates_are_non_negative_in_both_call_forms(cells):
    generator = torch.Generator().manual_seed(0)
    noise = 3.0 * torch.randn((12, *SHAPE), generator=generator)  # far beyond the usual contrast
    images = torch.cat([noise, -noise, gabors(cells, torch.tensor([0.0, 45.0, 90.0, 135.0]), 90.0)])
    full = cells(images, S)
    assert full.shape == (len(images), len(KINDS)) and (full >= 0).all() and torch.isfinite(full).all()
    columns = torch.randint(0, 4, (len(images),), generator=generator)
    paired = cells(images, S, columns)
    assert paired.shape == (len(images),)
    torch.testing.assert_close(paired, full.gather(1, columns[:, None])[:, 0])
    torch.testing.assert_close(cells(images.double(), S), full.double(), rtol=1e-5, atol=1e-5)  # any float dtype
    # differentiable in the images, as every energy needs
    x = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(cells(x, S, columns).sum(), x)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_simple_cell_depends_on_phase_the_complex_cell_does_not(cells):
    r = rates(cells, gabors(cells, 0.0, PHASES))  # the preferred orientation, 24 phases
    simple, complex_ = r["simple"], r["complex"]
    # simple: drive NORM * <Gabor, filter> ~ 8 at phase 0, -8 at 180: softplus gives ~8 and ~3e-4
    assert simple.argmax() == 0 and simple.max() / simple.min() > 1000
    assert simple[PHASES == 90.0].item() == pytest.approx(math.log(2), abs=1e-4)  # zero drive: the baseline
    # complex: the even and odd filters are exactly orthogonal (centred on a point-symmetric grid) and of unit
    # norm, so the rate is NORM * sqrt(cos^2 + sin^2) up to the even filter's removed mean (its envelope's DC
    # is exp(-2 pi^2 sigma^2 f^2) ~ 0.7 % of the envelope, a second-order 1e-4 effect) and float32 rounding
    assert complex_.max() / complex_.min() < 1.001
    assert complex_.mean().item() == pytest.approx(NORM, rel=0.01)
    assert (r["orientation_invariant"].max() / r["orientation_invariant"].min()) < 1.001  # also phase-invariant


def test_complex_cell_is_orientation_selective(cells):
    r = rates(cells, gabors(cells, ORIENTATIONS[:, None], PHASES))["complex"].amax(1)  # best phase per orientation
    away = circular(ORIENTATIONS, 0.0, 180.0)
    assert r.argmax() == 0
    # tuning falls with the distance from the preferred orientation, to ~1/75 at the orthogonal one
    order = away.argsort()
    assert (r[order][1:] <= r[order][:-1] + 1e-4).all()
    assert (r[away >= 15] < 0.9 * r.max()).all() and r[away == 90].item() < 0.02 * r.max()


def test_orientation_invariant_cell_responds_equally_to_every_orientation(cells):
    r = rates(cells, gabors(cells, ORIENTATIONS[:, None], PHASES))
    invariant = r["orientation_invariant"]
    # 16 pairs 11.25 degrees apart, L8 pooling of their amplitudes: the orientation ripple is ~1e-4
    assert invariant.max() / invariant.min() < 1.001
    assert invariant.min() > 0.9 * r["complex"].max()  # as strong as the complex cell at its best
    # but selective for spatial frequency: a Gabor of twice the frequency barely drives it, half the frequency
    # half as much (the amplitude overlap exp(-pi^2 sigma^2 df^2) of same-sigma Gabors: 0.085 and 0.54)
    for frequency, most in ((2 * FREQUENCY, 0.15), (FREQUENCY / 2, 0.6)):
        other = gabor(32, ORIENTATIONS[::4, None], frequency, PHASES[::6], SIGMA)
        other = NORM * other / other.flatten(-2).norm(dim=-1)[..., None, None]
        assert rates(cells, other[..., None, :, :])["orientation_invariant"].max() < most * invariant.min()


def test_polarity_invariant_cell_ignores_polarity_but_not_phase(cells):
    r = rates(cells, gabors(cells, 0.0, PHASES))
    polarity, simple = r["polarity_invariant"], r["simple"]
    half = len(PHASES) // 2  # phase p and p + 180: the same Gabor with its contrast reversed
    torch.testing.assert_close(polarity[:half], polarity[half:], rtol=1e-5, atol=1e-5)
    at = {int(p): polarity[i].item() for i, p in enumerate(PHASES)}
    assert at[0] == pytest.approx(at[180], rel=1e-5) and at[0] == pytest.approx(simple[0].item(), rel=1e-3)
    # 90 and 270: zero drive, the baseline log 2 (the simple cell's own), an order of magnitude below
    assert at[90] == pytest.approx(math.log(2), abs=1e-4) and at[270] == pytest.approx(math.log(2), abs=1e-4)
    assert at[0] > 10 * at[90]
    assert simple[PHASES == 180.0].item() < 1e-3  # what makes it differ from the simple cell


def test_fit_recovers_orientation_and_phase_of_gabors():
    generator = torch.Generator().manual_seed(1)
    n = 64
    orientation = torch.rand(n, generator=generator, dtype=torch.float64) * 180
    phase = torch.rand(n, generator=generator, dtype=torch.float64) * 360
    orientation[:3] = torch.tensor([0.0, 0.2, 179.9])  # at the end of the range
    for frequency, sigma in ((FREQUENCY, SIGMA), (0.2, 5.0)):
        images = 1.7 * gabor(32, orientation, frequency, phase, sigma)
        fit = fit_phase_orientation(images[:, None], frequency, sigma)
        assert (fit.orientation >= 0).all() and (fit.orientation < 180).all()
        assert (fit.phase >= 0).all() and (fit.phase < 360).all()
        assert circular(fit.orientation, orientation, 180.0).max() < 0.01
        assert phase_error(fit, orientation, phase).max() < 0.01
        torch.testing.assert_close(fit.amplitude, torch.full((n,), 1.7, dtype=torch.float64), rtol=1e-4, atol=0)
        assert fit.explained.min() > 0.95  # only the stimulus's mean, which the fit's filters ignore, is left out
        centred = fit_phase_orientation(images, frequency, sigma, around=0.0)  # (N, H, W) images also do
        assert (centred.orientation.abs() <= 90).all()
        assert circular(centred.orientation, orientation, 180.0).max() < 0.01
        # the fitted Gabor is the image
        rebuilt = gabor(32, centred.orientation, frequency, centred.phase, sigma, torch.float64)
        rebuilt = centred.amplitude[:, None, None] * rebuilt
        torch.testing.assert_close(rebuilt, images.double(), atol=1e-4, rtol=0)

    # with per-pixel noise as strong as the Gabor's own RMS (SNR 1 per pixel): within a few degrees
    images = 2.0 * gabor(32, orientation, FREQUENCY, phase, SIGMA)
    images = images + 0.3 * torch.randn(images.shape, generator=generator)
    fit = fit_phase_orientation(images, FREQUENCY, SIGMA)
    orientation_error = circular(fit.orientation, orientation, 180.0)
    phase_errors = phase_error(fit, orientation, phase)
    assert orientation_error.max() < 4.0 and orientation_error.median() < 1.0  # measured: 2.0 and 0.5
    assert phase_errors.max() < 8.0 and phase_errors.median() < 2.0  # measured: 5.0 and 1.0


def test_meis_show_each_cells_invariance(cells):
    """Gradient ascent through the products' own path (`GASettings.synthesize`: input shape, pixel clamp, device
    of the model, paired calls): the simple cell's MEI is its Gabor from every seed; the complex cell's MEIs
    keep its orientation but take any phase; the orientation-invariant cell's take any orientation."""
    n_seeds = 8
    targets = [(S, n) for n in KINDS for _ in range(n_seeds)]
    seeds = list(range(len(targets)))  # every image its own starting noise
    method = GASettings(seeds=tuple(seeds), steps=40, lr=0.05, blur_sigma=1.0)
    result = method.synthesize(lambda index: NeuronActivation(cells, [targets[i] for i in index]), seeds, cells)
    images = result.images
    assert images.shape == (len(targets), *SHAPE)
    torch.testing.assert_close(images.flatten(1).norm(dim=1), torch.full((len(targets),), NORM), rtol=1e-4, atol=0)
    rate = dict(zip(KINDS, (-result.energy).view(len(KINDS), n_seeds)))
    mei = dict(zip(KINDS, images.view(len(KINDS), n_seeds, *SHAPE)))
    best = rates(cells, gabors(cells, 0.0, 0.0))  # the preferred Gabor at the same norm
    for kind in KINDS:  # every MEI is on its cell's top: as good as the best Gabor up to the blurred gradient
        assert (rate[kind] > 0.98 * best[kind]).all(), kind
        assert rate[kind].max() / rate[kind].min() < 1.002, kind

    pref = cells.preferred_gabor("simple").flatten()
    simple = correlation(mei["simple"].flatten(1), pref.expand(n_seeds, -1), dim=1)
    assert (simple > 0.95).all()  # one best image: the same Gabor from every seed

    fit = fit_phase_orientation(mei["complex"], FREQUENCY, SIGMA, around=0.0)
    assert (fit.explained > 0.95).all() and (fit.orientation.abs() < 2.0).all()  # always its orientation ...
    phase = torch.deg2rad(fit.phase)
    resultant = torch.stack([phase.cos().mean(), phase.sin().mean()]).norm()
    assert resultant < 0.6 and len(set((fit.phase // 45).tolist())) >= 3  # ... but phases spread round the circle
    gaps = circular(fit.phase[:, None], fit.phase[None], 360.0)
    assert gaps.max() > 120

    fit = fit_phase_orientation(mei["orientation_invariant"], FREQUENCY, SIGMA)
    assert (fit.explained > 0.9).all()  # Gabor-like, at its frequency ...
    spread = circular(fit.orientation[:, None], fit.orientation[None], 180.0)
    assert spread.max() > 45 and len(set((fit.orientation // 22.5).tolist())) >= 3  # ... at many orientations

    polarity = correlation(mei["polarity_invariant"].flatten(1), pref.expand(n_seeds, -1), dim=1)
    assert (polarity.abs() > 0.95).all() and (polarity > 0).any() and (polarity < 0).any()  # the Gabor or its negative


def test_mei_product_runs_on_the_cells_unchanged(cells):
    """The MEI product's own function (labelled Dataset, pixel-space images, inhibitory images) takes the cells as
    it takes a trained model: the simple cell's most inhibitory image is its Gabor's negative."""
    from encoders.products.meis import compute_meis

    targets = all_targets(cells)
    method = GASettings(seeds=(0, 1), steps=20)
    meis = compute_meis(cells, targets, method)
    assert list(meis["neuron_id"].values) == list(KINDS) and meis["image"].shape == (1, len(KINDS), 2, *SHAPE)
    assert (meis["activation"].values > 0.98 * NORM).all()  # every cell's best is about |drive| = NORM
    pixels = meis["image_pixels"].values
    assert pixels.min() >= 0 and pixels.max() <= 255  # clamped to what a screen shows
    miis = compute_meis(cells, [(S, "simple")], method, minimize=True)
    assert (miis["activation"].values < 1e-3).all()
    pref = cells.preferred_gabor("simple").flatten()
    mii = torch.as_tensor(miis["image"].values[0, 0]).flatten(1)
    assert (correlation(mii, pref.expand(2, -1), dim=1) < -0.95).all()


def test_orientation_only_cell_keeps_its_phase_at_every_orientation(cells):
    """Its Gabor (phase 0) drives it equally at every orientation; the opposite phase drives it about as little as it
    drives the simple cell, so orientation is its only invariance (a loop of its best images sweeps orientation alone)."""
    r = rates(cells, gabors(cells, ORIENTATIONS[:, None], PHASES))["orientation_only"]  # (orientations, phases)
    at_phase_0 = r[:, PHASES == 0.0]
    assert at_phase_0.max() / at_phase_0.min() < 1.001  # 32 filters 11.25 degrees apart round the circle, L8 pooling
    assert (r[:, PHASES == 180.0] < 0.2 * at_phase_0.min()).all()
    assert INVARIANT_TO["orientation_only"] == ("orientation",)
