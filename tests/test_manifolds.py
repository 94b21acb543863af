"""Invariance manifolds, their alignment and grouping, checked on simulated cells whose invariances are known.

Sizes are small (1x24x24 images, 20 latents per loop, MEIs in 60 steps): the file runs in well under a minute on one
thread. Every value is computed, nothing is mocked; measured values are noted next to their bounds.
"""

from __future__ import annotations

import math

import pytest
import torch

from encoders.errors import EncodersError
from encoders.simulated import SimulatedCells, fit_phase_orientation, gabor
from encoders.synthesis import NeuronActivation, default_norm, optimize_images
from encoders.synthesis.manifolds import (
    AlignmentResult,
    InvarianceGenerator,
    ManifoldResult,
    align_manifolds,
    contrastive_loss,
    group_neurons,
    invariance_manifolds,
    latent_grid,
    neighbour_masks,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: thread start-up dominates on 2 shared cores
S = "simulated"
SIZE = 24
SHAPE = (1, SIZE, SIZE)
NORM = default_norm(SHAPE)  # 0.25 * 24 = 6
FREQUENCY, SIGMA = 0.125, 4.0  # the cells' defaults
KINDS = ["complex", "complex", "simple", "orientation_invariant"]
ORIENTATIONS = [0.0, 60.0, 0.0, 0.0]
POINTS = 20


def winding(angles: torch.Tensor, period: float) -> float:
    """Total change of an angle (degrees, period `period`) round the closed loop, each step taken the short way."""
    steps = torch.diff(torch.cat([angles, angles[:1]]))
    return ((steps + period / 2) % period - period / 2).sum().item()


def coverage(orientations: torch.Tensor) -> float:
    """Degrees of the 180 degree circle of orientations spanned: 180 minus the widest empty arc."""
    ordered = (orientations % 180).sort().values
    return 180.0 - torch.diff(torch.cat([ordered, ordered[:1] + 180.0])).max().item()


def circular(a: torch.Tensor, b: float, period: float) -> torch.Tensor:
    return ((a - b + period / 2) % period - period / 2).abs()


def meis_of(cells: SimulatedCells) -> tuple[list[tuple[str, str]], torch.Tensor]:
    targets = [(S, n) for n in cells.neuron_ids(S)]
    mei = optimize_images(NeuronActivation(cells, targets), len(targets), SHAPE, 0, 60, lr=0.05, norm=NORM)
    return targets, -mei.energy


@pytest.fixture(scope="module")
def loops():
    """complex (0 and 60 degrees), simple and orientation-invariant cells' loops, one batch, defaults, seed 0."""
    cells = SimulatedCells(KINDS, size=SIZE, orientation=ORIENTATIONS).eval()
    targets, activation = meis_of(cells)
    return cells, targets, activation, invariance_manifolds(cells, targets, activation, NORM, points=POINTS)


def test_complex_cells_loops_wind_once_round_the_phase_circle(loops):
    """A complex cell's best images are a circle of Gabor phases: its loop meets the rule and goes once round it,
    at the cell's orientation."""
    cells, targets, activation, result = loops
    assert isinstance(result, ManifoldResult) and result.images.shape == (4, POINTS, *SHAPE)
    assert result.latents.shape == (POINTS, 1) and torch.allclose(result.latents[:, 0], torch.arange(POINTS) / POINTS)
    torch.testing.assert_close(result.images.flatten(2).norm(dim=2), torch.full((4, POINTS), NORM), rtol=1e-4, atol=0)
    torch.testing.assert_close(result.relative, result.activations / activation[:, None])
    assert torch.equal(result.reached, (result.relative.mean(1) >= 0.9) & (result.relative.amin(1) >= 0.85))
    assert result.targets == targets and result.trace.shape == (1000, 4)
    for i in (0, 1):
        assert result.reached[i] and result.stopped_at[i] < 400  # measured 175, 174 steps
        fit = fit_phase_orientation(result.images[i], FREQUENCY, SIGMA, around=ORIENTATIONS[i])
        assert abs(abs(winding(fit.phase, 360.0)) - 360) < 30  # measured +-360.0
        assert (circular(fit.orientation, ORIENTATIONS[i], 180.0) <= 5).all()  # measured within 4 degrees
        assert result.contrastive[i] < -0.7  # spread round the circle: measured -0.87
        stop = int(result.stopped_at[i])  # the trace holds the step's value once the neuron has stopped
        assert result.trace[stop, i] >= 0.9 and (result.trace[stop:, i] == result.trace[stop, i]).all()
    # the frozen generator re-makes the loops; an identity affine changes nothing
    generator = result.generator
    assert isinstance(generator, InvarianceGenerator) and not any(p.requires_grad for p in generator.parameters())
    with torch.no_grad():
        torch.testing.assert_close(generator(result.latents), result.images, atol=1e-5, rtol=0)
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
        torch.testing.assert_close(generator(result.latents, identity, torch.tensor([1, 0])), result.images[[1, 0]], atol=1e-5, rtol=0)


def test_simple_cell_loop_meets_the_rule_only_collapsed(loops):
    """A simple cell has one best image. Its loop meets the rule only once the contrastive weight has decayed (later
    than the complex cells), and then every image carries the cell's one Gabor (same orientation and phase): the
    loop's spread is in what the cell ignores (at the rule's 90 %, about 44 % of each image's norm), and its
    contrastive term is near that of a single image, not a complex cell's."""
    _, _, _, result = loops
    assert result.reached[2]
    assert result.stopped_at[2] > result.stopped_at[:2].max()  # measured 203 vs 175
    fit = fit_phase_orientation(result.images[2], FREQUENCY, SIGMA, around=0.0)
    assert abs(winding(fit.phase, 360.0)) < 10 and (circular(fit.phase, 0.0, 360.0) < 15).all()  # measured 0, within 3
    assert (circular(fit.orientation, 0.0, 180.0) < 5).all()  # measured within 1 degree
    assert result.contrastive[2] > -0.3  # measured -0.19 (complex cells -0.87)
    flat = result.images[2].flatten(1)
    cosine = (flat / flat.norm(dim=1, keepdim=True)) @ (flat / flat.norm(dim=1, keepdim=True)).T
    assert cosine.min() > 0.4  # measured 0.57: no two images far apart (a complex cell's loop has opposite images)


def test_orientation_invariant_cell_loop(loops):
    """The orientation-invariant cell responds to a Gabor of any orientation and phase. Its 1-D loop meets the rule
    and is mostly a phase loop whose orientation wanders over part of the circle, unlike a complex cell's: a phase
    loop is what the contrastive term prefers at tau = 0.3 (see the next test), and the loop is stopped once it
    meets the rule, before it would explore more."""
    _, _, _, result = loops
    assert result.reached[3]  # measured mean 0.98, min 0.853
    fit = fit_phase_orientation(result.images[3], FREQUENCY, SIGMA, around=0.0)
    assert abs(abs(winding(fit.phase, 360.0)) - 360) < 30
    assert coverage(fit.orientation) > 30  # measured 95 degrees (the complex cells' 8)
    assert (fit.explained > 0.5).all()  # Gabors of the cell's frequency: measured >= 0.70


def test_orientation_only_cell_loop_sweeps_orientation_at_one_phase():
    """A cell invariant to orientation alone (`orientation_only`): its loop meets the rule and turns its Gabor once
    round the orientation circle (180 degrees: an even Gabor comes back) in small steps, its phase held."""
    cells = SimulatedCells(["orientation_only"], size=SIZE).eval()
    targets, activation = meis_of(cells)
    result = invariance_manifolds(cells, targets, activation, NORM, points=POINTS)
    assert result.reached[0]  # measured at step 196: mean 0.901, min 0.895
    fit = fit_phase_orientation(result.images[0], FREQUENCY, SIGMA, around=90.0)
    steps = torch.diff(torch.cat([fit.orientation, fit.orientation[:1]]))
    steps = (steps + 90) % 180 - 90
    assert abs(abs(steps.sum().item()) - 180) < 20 and steps.abs().max() < 20  # measured one turn, steps of 7-12 degrees
    assert (circular(fit.phase, 0.0, 360.0) < 15).all()  # measured within 3 degrees
    assert (fit.explained > 0.5).all()  # measured 0.80-0.83


def test_contrastive_term_on_exact_gabor_loops():
    """What the contrastive term prefers among loops of exact Gabors (no training). At tau = 0.3 a phase loop scores
    lower (more spread) than loops through orientation, so on the orientation-invariant cell the loop need not sweep
    orientation; at tau = 0.1 a 360 degree orientation sweep of an odd Gabor wins. Equal images score 0."""
    z = torch.arange(POINTS, dtype=torch.float64) / POINTS
    positive, negative = neighbour_masks(POINTS, 1, 2)

    def score(orientation, phase, tau):
        images = gabor(SIZE, orientation, FREQUENCY, phase, SIGMA)[None, :, None]
        return contrastive_loss(images, positive, negative, tau).item()

    phase_loop = (torch.zeros(POINTS), 360 * z)
    orientation_loop = (180 * z, torch.zeros(POINTS))  # an even Gabor comes back after 180 degrees
    odd_sweep = (360 * z, torch.full((POINTS,), 90.0))  # an odd Gabor needs 360
    assert score(*phase_loop, 0.3) < min(score(*orientation_loop, 0.3), score(*odd_sweep, 0.3))  # -0.76, -0.60, -0.74
    assert score(*odd_sweep, 0.1) < score(*phase_loop, 0.1)  # -0.72 vs -0.51
    same = gabor(SIZE, 0.0, FREQUENCY, 0.0, SIGMA).expand(1, POINTS, 1, SIZE, SIZE)
    assert contrastive_loss(same, positive, negative, 0.3).abs().item() < 1e-5


def test_contrastive_term_and_its_decay_are_what_make_the_loops():
    """Without the contrastive term a complex cell's loop collapses onto one image (the MEI); with a weight that does
    not decay, the simple cell's loop stays spread and far below the floors (the weight 10 outweighs the activation)."""
    cells = SimulatedCells(["complex", "simple"], size=SIZE).eval()
    targets, activation = meis_of(cells)
    collapsed = invariance_manifolds(cells, targets[:1], activation[:1], NORM, points=POINTS, contrastive=0.0)
    assert collapsed.reached[0] and collapsed.stopped_at[0] < 60  # measured 14 steps
    fit = fit_phase_orientation(collapsed.images[0], FREQUENCY, SIGMA, around=0.0)
    assert abs(winding(fit.phase, 360.0)) < 30 and collapsed.contrastive[0] > -0.3  # measured 0 degrees, -0.04
    fixed = invariance_manifolds(cells, targets[1:], activation[1:], NORM, points=POINTS, steps=300, half_life=1e9)
    assert not fixed.reached[0] and fixed.stopped_at[0] == 300
    assert fixed.trace[-50:, 0].max() < 0.9  # measured 0.29: the loop stays spread, far below


def test_torus_on_the_orientation_invariant_cell():
    """A 2-D latent: the images form a torus sampled on a points x points grid, the rule is checked on that grid. On
    the orientation-invariant cell it meets the rule and spans part of the orientation circle (measured 50 degrees; a
    complex cell's 1-D loop 8) while its phase goes round along one direction of the torus."""
    cells = SimulatedCells(["orientation_invariant"], size=SIZE).eval()
    targets, activation = meis_of(cells)
    result = invariance_manifolds(cells, targets, activation, NORM, latent_dim=2, points=8, harmonics=3)
    assert result.images.shape == (1, 64, *SHAPE) and result.latents.shape == (64, 2)
    assert torch.equal(result.latents, latent_grid(8, 2)) and result.relative.shape == (1, 64)
    assert result.reached[0] and result.stopped_at[0] < 1000  # measured 475 steps
    assert result.relative[0].amin() >= 0.85 and result.relative[0].mean() >= 0.9  # measured 0.86, 1.00
    fit = fit_phase_orientation(result.images[0], FREQUENCY, SIGMA, around=0.0)
    assert coverage(fit.orientation) > 30
    phases = fit.phase.view(8, 8)
    windings = [abs(winding(row, 360.0)) for row in phases] + [abs(winding(column, 360.0)) for column in phases.T]
    assert max(windings) > 300  # measured: 4 of the 8 rows wind by -360, no column does


def test_batching_neurons_changes_no_loop():
    """Three neurons trained together give each the loop it gets alone (same seeds): neurons never interact."""
    cells = SimulatedCells(["complex", "simple", "orientation_invariant"], size=SIZE, orientation=[30.0, 0.0, 0.0]).eval()
    targets, activation = meis_of(cells)
    seeds = [3, 4, 5]
    settings = dict(points=POINTS, steps=40)
    together = invariance_manifolds(cells, targets, activation, NORM, seed=seeds, **settings)
    for i in range(3):
        alone = invariance_manifolds(cells, targets[i:i + 1], activation[i:i + 1], NORM, seed=seeds[i:i + 1], **settings)
        torch.testing.assert_close(together.images[i], alone.images[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(together.trace[:, i], alone.trace[:, 0], atol=1e-4, rtol=0)
    again = invariance_manifolds(cells, targets, activation, NORM, seed=seeds, **settings)
    assert torch.equal(again.images, together.images)  # deterministic


def test_alignment_and_grouping(loops):
    """The 0 degree complex cell's loop, rotated by about 60 degrees, drives the 60 degree complex cell (and the
    other way round); neither drives the simple cell. The simple cell's collapsed loop drives both complex cells
    (they respond to its one Gabor), so only the mutual rule keeps it apart."""
    cells, targets, activation, result = loops
    three = targets[:3]
    aligned = align_manifolds(cells, result, [0, 1, 2], three, activation[:3], steps=100, rotations=2)
    assert isinstance(aligned, AlignmentResult) and aligned.affine.shape == (3, 3, 2, 3)
    assert aligned.images.shape == (3, 3, POINTS, *SHAPE) and aligned.relative.shape == (3, 3, POINTS)
    assert aligned.template_targets == three and aligned.targets == three
    assert aligned.mean_relative[0, 1] >= 0.85 and aligned.mean_relative[1, 0] >= 0.85  # measured 0.906, 0.911
    assert aligned.mean_relative[0, 2] < 0.5 and aligned.mean_relative[1, 2] < 0.5  # measured 0.31: a phase loop on a simple cell
    assert aligned.mean_relative[2, 0] >= 0.85 and aligned.mean_relative[2, 1] >= 0.85  # measured 0.905, 0.910
    for i in range(3):  # a loop on its own neuron keeps its activation (identity is a starting point)
        assert aligned.mean_relative[i, i] >= result.relative[i].mean() - 0.02
    torch.testing.assert_close(aligned.mean_relative, aligned.relative.mean(2))
    # the aligned loop shows the 60 degree cell's orientation, still going round the phase circle
    fit = fit_phase_orientation(aligned.images[0, 1], FREQUENCY, SIGMA, around=60.0)
    assert (circular(fit.orientation, 60.0, 180.0) < 10).all()  # measured within 3 degrees
    assert abs(abs(winding(fit.phase, 360.0)) - 360) < 30
    matrix = aligned.affine[0, 1, :, :2]
    angle = math.degrees(math.atan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1]))
    assert abs(abs(angle) - 60) < 10 or abs(abs(angle) - 120) < 10  # a rotation by 60 (mod 180): measured 60

    assert group_neurons(aligned).tolist() == [0, 0, 1]
    assert group_neurons(aligned, mutual=False).tolist() == [0, 0, 0]  # the simple cell's template explains all three
    assert group_neurons(aligned, threshold=0.95).tolist() == [0, 1, 2]
    # templates a subset: where the way back was not measured the link is one-way (complex-60 is no template here)
    subset = align_manifolds(cells, result, [0, 2], three, activation[:3], steps=100, rotations=2, keep_images=False)
    assert subset.images is None and subset.mean_relative.shape == (2, 3)
    assert group_neurons(subset).tolist() == [0, 0, 1]  # both templates link two targets; ties go to the first


def test_runs_inside_inference_mode():
    """Products may run inside Lightning's inference mode: training and alignment switch it off themselves."""
    cells = SimulatedCells(["complex"], size=SIZE).eval()
    with torch.inference_mode():
        result = invariance_manifolds(cells, [(S, "complex")], torch.tensor([NORM]), NORM, steps=3)
        aligned = align_manifolds(cells, result, [0], [(S, "complex")], torch.tensor([NORM]), steps=2, rotations=1)
    assert result.trace.shape == (3, 1) and torch.isfinite(aligned.mean_relative).all()


def test_bad_inputs_are_named():
    """One-line EncodersErrors that name the argument, before any optimisation."""
    cells = SimulatedCells(["simple", "complex"], size=SIZE).eval()
    targets = [(S, "simple"), (S, "complex")]
    good = dict(model=cells, targets=targets, mei_activation=[NORM, NORM], norm=NORM, steps=1)
    cases = [
        (dict(latent_dim=3), "latent_dim"), (dict(latent_dim=0), "latent_dim"),
        (dict(mean_floor=0.0), "mean_floor"), (dict(mean_floor=1.2), "mean_floor"),
        (dict(point_floor=-0.1), "point_floor"), (dict(point_floor=1.01), "point_floor"),
        (dict(mei_activation=[NORM]), "mei_activation"), (dict(mei_activation=[NORM, float("nan")]), "mei_activation"),
        (dict(steps=0), "steps"), (dict(points=8), "points"), (dict(harmonics=0), "harmonics"),
        (dict(neighbours=0.6), "neighbours"), (dict(lr=0.0), "lr"), (dict(norm=-1.0), "norm"),
        (dict(temperature=0.0), "temperature"), (dict(contrastive=-1.0), "contrastive"),
        (dict(seed=[1, 2, 3]), "seed"), (dict(targets=[]), "targets"),
    ]
    for change, name in cases:
        with pytest.raises(EncodersError) as error:
            invariance_manifolds(**{**good, **change})
        message = str(error.value)
        assert message.startswith(name + " ") and "\n" not in message, (change, message)
    with pytest.raises(EncodersError, match="not for neurons \\['complex'\\]"):
        invariance_manifolds(**{**good, "mei_activation": [NORM, -1.0]})
    with pytest.raises(EncodersError, match="unknown neuron id 'nope'"):
        invariance_manifolds(**{**good, "targets": [(S, "simple"), (S, "nope")]})
    # a point floor above the mean floor is allowed: the mean floor is then implied
    invariance_manifolds(**{**good, "mean_floor": 0.8, "point_floor": 0.9})

    result = invariance_manifolds(**{**good, "points": 9})
    for change, name in [(dict(templates=[2]), "templates"), (dict(steps=0), "steps"), (dict(rotations=0), "rotations"),
                         (dict(mei_activation=[0.0, NORM]), "mei_activation")]:
        arguments = dict(model=cells, result=result, templates=[0], targets=targets, mei_activation=[NORM, NORM])
        with pytest.raises(EncodersError, match=f"^{name} "):
            align_manifolds(**{**arguments, **change})
    with pytest.raises(EncodersError, match="unknown neuron id 'nope'"):
        align_manifolds(cells, result, [0], [(S, "nope")], [NORM])
    aligned = align_manifolds(cells, result, [0], targets, [NORM, NORM], steps=1, rotations=1)
    assert group_neurons(aligned, threshold=1e6).tolist() == [0, 1]  # nothing explained: groups of one
    with pytest.raises(EncodersError, match="^threshold "):
        group_neurons(aligned, threshold=0.0)
