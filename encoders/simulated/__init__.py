"""Simulated neurons with known invariances, behind the response-model contract (`encoders.contract`).

- `encoders.simulated.cells`: :class:`SimulatedCells` (simple, complex, orientation-invariant and
  polarity-invariant cells), the `gabor` image generator and `fit_phase_orientation`.
"""

from encoders.simulated.cells import (
    INVARIANT_TO,
    KINDS,
    SESSION,
    GaborFit,
    SimulatedCells,
    fit_phase_orientation,
    gabor,
)

__all__ = ["INVARIANT_TO", "KINDS", "SESSION", "GaborFit", "SimulatedCells", "fit_phase_orientation", "gabor"]
