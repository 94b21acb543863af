"""Invariance manifolds as a product: simulated cells through `make_products`, grouped by alignment; bad settings.

The generator, its training and the alignment are checked in test_manifolds.py; here the product around them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from encoders.errors import EncodersError
from encoders.products import InvarianceManifolds, ProductData, make_products
from encoders.simulated import SimulatedCells, fit_phase_orientation
from encoders.synthesis import GASettings

pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: thread start-up dominates on 2 shared cores
S = "simulated"


def test_manifolds_of_simulated_cells_are_stored_labelled_and_grouped(tmp_path):
    """Two complex cells (0 and 60 degrees) and a simple cell: every loop meets the rule, the complex cells' loops
    sweep the phase, and alignment groups the two complex cells apart from the simple cell."""
    cells = SimulatedCells(["complex", "complex", "simple"], size=24, orientation=[0.0, 60.0, 30.0]).eval()
    product = InvarianceManifolds(neurons=[f"{S}/{n}" for n in cells.neuron_ids(S)], method=GASettings(seeds=(0, 1), steps=100))
    (made,) = make_products([product], [], cells, ProductData(), tmp_path)
    assert made.path == tmp_path / "manifold_1d.nc" and made.figures[0].stat().st_size > 5000
    with xr.open_dataset(made.path) as ds:
        assert ds.image.dims == ("neuron", "point", "channel", "y", "x") and ds.image.shape == (3, 20, 1, 24, 24)
        assert ds.latent.shape == (20, 1) and ds.latent.attrs["units"] == "turn"
        assert bool(ds.reached.all()) and (ds.stopped_at < 1000).all()
        relative = ds.relative_activation.values
        assert (relative.mean(1) >= 0.9).all() and (relative.min(1) >= 0.85).all()
        np.testing.assert_allclose(np.sqrt((ds.image.values ** 2).sum(axis=(2, 3, 4))), 0.25 * 24, rtol=1e-4)
        assert ds.group.values.tolist() == [0, 0, 1]  # measured: complex loops align to each other (0.91), not to the simple cell (0.31)
        assert ds.template.values.tolist() == ["simulated/complex-0", "simulated/complex-1", "simulated/simple"]
        assert ds.aligned_mean.shape == (3, 3) and json.loads(ds.attrs["templates"]) == [0, 1, 2]
        fit = fit_phase_orientation(ds.image.values[0], 0.125, 4.0, around=0.0)
        steps = np.diff(np.concatenate([fit.phase.numpy(), fit.phase.numpy()[:1]]))
        assert abs(abs(((steps + 180) % 360 - 180).sum()) - 360) < 30  # one full turn of phase round the loop
    assert "3 met the rule" in made.line and "2 group(s)" in made.line


def test_bad_settings_are_named():
    for change, name in [(dict(latent_dim=3), "latent_dim"), (dict(latent_dim=0), "latent_dim"), (dict(points=2), "points"),
                         (dict(mean_floor=0.0), "mean_floor"), (dict(point_floor=1.5), "point_floor"),
                         (dict(point_floor=0.95), "point_floor"), (dict(steps=0), "steps"), (dict(group_threshold=0), "group_threshold")]:
        with pytest.raises(EncodersError, match=f"^{name} "):
            InvarianceManifolds(neurons=[f"{S}/complex"], **change)
