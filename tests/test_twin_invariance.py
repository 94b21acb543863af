"""How far images reach along a neuron's true invariance, checked on simulated cells whose invariances are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.simulated import SimulatedCells
from encoders.twin.invariance import _dominant_wavevector, covered_arc, extent, invariance_reach, positions, relative_phases

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cells():
    return SimulatedCells(["complex", "simple"], size=32, orientation=30.0).eval()


def rate(cells):
    return lambda images, j: cells(images, cells.session)[:, j]


def test_phases_and_positions_of_gabors_are_recovered(cells):
    mei = cells.preferred_gabor("complex") * 8.0
    phases = torch.arange(0, 360, 20.0)
    gabors = cells.preferred_gabor("complex", phase=phases) * 8.0
    measured = relative_phases(gabors, mei, _dominant_wavevector(mei))
    np.testing.assert_allclose(measured.numpy(), phases.numpy(), atol=0.1)  # measured within 0.005 degrees
    moved = torch.roll(gabors[:3], (3, -2), (-2, -1))
    assert positions(moved, mei, 8).tolist() == [[3.0, -2.0]] * 3


def test_complex_cell_tolerates_every_phase_simple_cell_a_quarter(cells):
    """The complex cell keeps >= 0.85 at all 12 phase shifts of its MEI, the simple cell at 3 (within +-30 degrees:
    its rate follows the cosine of the phase); Gabors of every phase reach the complex cell's whole circle."""
    meis = torch.stack([cells.preferred_gabor("complex"), cells.preferred_gabor("simple")]) * 8.0
    rates = torch.stack([cells(meis, cells.session)[0, 0], cells(meis, cells.session)[1, 1]])
    phases = torch.arange(0, 360, 20.0)
    images = torch.stack([cells.preferred_gabor("complex", phase=phases), cells.preferred_gabor("simple", phase=torch.zeros(18))]) * 8.0
    reach = invariance_reach(rate(cells), meis, rates, images)
    assert reach.true_phase_arc.tolist() == [360.0, 90.0]
    assert reach.phase_arc[0] == pytest.approx(340.0, abs=0.1) and reach.phase_arc[1] == pytest.approx(0.0, abs=1e-6)
    assert reach.phase_reach[0] == pytest.approx(340 / 360, abs=1e-3) and reach.phase_reach[1] == 0
    # neither is position invariant beyond its envelope: shifts of 2 px keep the centred 4-px-envelope cells
    assert reach.true_position_extent[0] <= 6 and reach.position_extent.tolist() == [0.0, 0.0]
    assert np.isnan(reach.position_reach[1]) or reach.true_position_extent[1] > 0


def test_spans():
    assert covered_arc(np.array([350.0, 10.0])) == pytest.approx(20.0) and covered_arc(np.array([5.0])) == 0.0
    assert extent(np.array([[0, 0], [3, 4], [1, 1]])) == pytest.approx(5.0)
