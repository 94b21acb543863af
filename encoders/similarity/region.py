"""Which pairs of similarity scores can occur together (Cloos et al. 2024, "allowable region").

For a target X (stimuli x neurons) and two measures A and B, synthetic data Y starts as Gaussian
noise of X's shape and is optimised with Adam to *maximise* A(Y, X) while holding B(Y, X) at a
target value t, and separately to *minimise* A under the same constraint. Sweeping t across B's
range traces the upper and lower edges of the region of (B, A) pairs that some Y reaches.

The constraint is a quadratic penalty: the loss of one problem is

    ∓A(Y, X) + penalty · (B(Y, X) - t)²          (- to maximise A, + to minimise it)

and a result counts as ``met`` when |B - t| <= tolerance at the last step. All 2·T problems (T
targets, two edges) have their own Y, start from the same seeded noise and are optimised together
by one Adam on the sum of their losses (the problems do not interact: Adam's update is per
element). The measures are called as ``measure(Y, X)``, synthetic data first, as in
``encoders similarity optimize`` (this matters only for asymmetric ones such as ``ridge_r2``:
ridge from Y predicting X).

CLI (wired as ``encoders similarity region``)::

    encoders similarity region --measure-a cka_linear --measure-b procrustes_angular_score --out DIR \
        [--targets 9 | --b-values 0.2 0.5 ...] [--tolerance 0.02 --penalty 100 --steps 300 --lr 0.05 --seed 0] \
        (--data FILE --session S [--tier test] | --synthetic-target [--stimuli 100 --units 20 ...])
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from encoders.similarity import DIFFERENTIABLE, HIGHER_IS_BETTER, MEASURES, get_measure
from encoders.similarity.centering import as_representation
from encoders.similarity.captured import add_target_arguments, check_measures, read_target

# the values each measure can take (for checking explicit B targets) and the span swept by default
RANGES: dict[str, tuple[float, float]] = {
    "cka_linear": (0.0, 1.0),
    "cka_linear_unbiased": (-1.0, 1.0),
    "cka_rbf": (0.0, 1.0),
    "nbs": (0.0, 1.0),
    "procrustes_angular": (0.0, math.pi / 2),
    "procrustes_angular_score": (0.0, 1.0),
    "procrustes_euclidean": (0.0, math.sqrt(2.0)),
    "ridge_r2": (-math.inf, 1.0),
    "rsa_pearson": (-1.0, 1.0),
    "cca_mean": (0.0, 1.0),
    "svcca": (0.0, 1.0),
}
SWEEP: dict[str, tuple[float, float]] = {**RANGES, "cka_linear_unbiased": (0.0, 1.0), "ridge_r2": (0.0, 1.0),
                                         "rsa_pearson": (0.0, 1.0)}
EDGES = ("max", "min")


def default_targets(measure: str, count: int) -> np.ndarray:
    """``count`` B targets evenly inside the swept span of ``measure``, at the centres of equal bins."""
    if count < 1:
        raise ValueError(f"--targets must be >= 1, got {count}")
    lo, hi = SWEEP[measure]
    return lo + (hi - lo) * (np.arange(count) + 0.5) / count


def check_pair(measure_a: str, measure_b: str) -> None:
    """ValueError for an unknown or non-differentiable measure, or A == B."""
    for name in (measure_a, measure_b):
        get_measure(name)  # unknown: the message lists the known ones
        if not DIFFERENTIABLE[name]:
            raise ValueError(f"measure {name!r} has no gradient and cannot be optimised; "
                             f"choose from {sorted(m for m in MEASURES if DIFFERENTIABLE[m])}")
    if measure_a == measure_b:
        raise ValueError(f"measure A and measure B must differ, both are {measure_a!r}")


def check_targets(measure: str, targets: Sequence[float]) -> np.ndarray:
    """The B targets as an array; ValueError if empty, not finite or outside the measure's range."""
    values = np.asarray(list(targets), dtype=np.float64)
    if values.size == 0:
        raise ValueError("give at least one B target")
    lo, hi = RANGES[measure]
    bad = [float(v) for v in values if not (np.isfinite(v) and lo <= v <= hi)]
    if bad:
        raise ValueError(f"B target(s) {bad} outside the range [{lo:g}, {hi:g}] of {measure!r}")
    return values


def allowable_region(
    target: Tensor,
    measure_a: str,
    measure_b: str,
    b_targets: Sequence[float],
    tolerance: float = 0.02,
    penalty: float = 100.0,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
    init_scale: float = 1.0,
    record_steps: bool = False,
) -> xr.Dataset:
    """Upper and lower edges of A at each held value of B (see the module docstring).

    Returns a Dataset with dims target (the B targets) and edge ("max", "min"): ``a_score`` and
    ``b_score`` (final values), ``met`` (|b_score - target| <= tolerance); with ``record_steps``
    also ``a_trace`` and ``b_trace`` (target, edge, step). Attrs: the measures, the settings and
    ``seconds`` (wall time of the optimisation).

    Raises:
        ValueError: unknown, equal or non-differentiable measures, too few stimuli, NaN target,
            B targets outside B's range, tolerance <= 0, penalty <= 0, steps < 1, lr <= 0.
    """
    X = as_representation(target, "target", min_stimuli=1).detach().double()
    if not torch.isfinite(X).all():
        bad = int((~torch.isfinite(X)).sum())
        raise ValueError(f"the target holds {bad} NaN or infinite value(s); drop or impute them first")
    check_pair(measure_a, measure_b)
    check_measures([measure_a, measure_b], X.shape[0])
    t = check_targets(measure_b, b_targets)
    if not tolerance > 0 or not penalty > 0:
        raise ValueError(f"need tolerance > 0 and penalty > 0, got {tolerance} and {penalty}")
    if steps < 1 or not lr > 0 or not init_scale > 0:
        raise ValueError(f"need steps >= 1, lr > 0 and init_scale > 0, got {steps}, {lr}, {init_scale}")
    fa, fb = MEASURES[measure_a], MEASURES[measure_b]
    T = t.size
    g = torch.Generator().manual_seed(seed)
    start = init_scale * torch.randn(X.shape, generator=g, dtype=torch.float64)
    # one leaf tensor per problem (indexing one stacked (T, 2, ...) tensor measured slower); torch.func.vmap
    # cannot batch the measures (boolean-mask indexing), so the problems are evaluated in a Python loop
    Y = [[torch.nn.Parameter(start.clone()) for _ in EDGES] for _ in range(T)]
    optimizer = torch.optim.Adam([y for row in Y for y in row], lr=lr)
    sign = (-1.0, 1.0)  # maximise A on edge "max", minimise it on edge "min"
    a = np.empty((T, 2, steps + 1))
    b = np.empty((T, 2, steps + 1))
    began = time.perf_counter()
    for step in range(steps + 1):
        loss = 0.0
        for i in range(T):
            for e in range(2):
                va, vb = fa(Y[i][e], X), fb(Y[i][e], X)
                a[i, e, step], b[i, e, step] = va.item(), vb.item()
                loss = loss + sign[e] * va + penalty * (vb - float(t[i])) ** 2
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - began
    final_a, final_b = a[..., -1], b[..., -1]
    met = np.abs(final_b - t[:, None]) <= tolerance
    variables = {
        "a_score": (("target", "edge"), final_a, {"long_name": f"{measure_a} of the synthetic data with the target "
                                                                "(final step)", "units": "1"}),
        "b_score": (("target", "edge"), final_b, {"long_name": f"{measure_b} of the synthetic data with the target "
                                                                "(final step; held at the target)", "units": "1"}),
        "met": (("target", "edge"), met, {"long_name": f"|b_score - target| <= tolerance ({tolerance:g})"}),
    }
    coords = {"target": ("target", t, {"long_name": f"value at which {measure_b} is held", "units": "1"}),
              "edge": list(EDGES)}
    if record_steps:
        variables["a_trace"] = (("target", "edge", "step"), a, {"long_name": f"{measure_a} per step", "units": "1"})
        variables["b_trace"] = (("target", "edge", "step"), b, {"long_name": f"{measure_b} per step", "units": "1"})
        coords["step"] = np.arange(steps + 1)
    return xr.Dataset(
        variables,
        coords=coords,
        attrs={
            "measure_a": measure_a, "measure_b": measure_b,
            "higher_is_better_a": int(HIGHER_IS_BETTER[measure_a]),
            "higher_is_better_b": int(HIGHER_IS_BETTER[measure_b]),
            "method": "quadratic penalty: loss = -+A(Y, X) + penalty * (B(Y, X) - target)^2, one Y per target and "
                      "edge, all from the same seeded N(0, init_scale^2) noise, one Adam on the summed losses",
            "tolerance": float(tolerance), "penalty": float(penalty), "lr": float(lr), "seed": int(seed),
            "steps": int(steps), "init_scale": float(init_scale), "seconds": float(seconds),
            "n_stimuli": int(X.shape[0]), "n_units": int(X.shape[1]),
        },
    )


def plot_region(ds: xr.Dataset, title: str = ""):
    """B on x, A on y: the upper (max) and lower (min) edges, the region between shaded, unmet points as x."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(4.8, 4.2), layout="constrained")
    a, b, met = ds["a_score"].values, ds["b_score"].values, ds["met"].values
    order = np.argsort(ds["target"].values)
    colors = {"max": "tab:red", "min": "tab:blue"}
    for e, edge in enumerate(EDGES):
        ok = order[met[order, e]]
        ax.plot(b[ok, e], a[ok, e], "o-", color=colors[edge], ms=4, label=f"{edge} {ds.attrs['measure_a']}")
        miss = order[~met[order, e]]
        if miss.size:
            ax.plot(b[miss, e], a[miss, e], "x", color=colors[edge], ms=7, label=f"{edge}: B target not met")
    both = order[met[order].all(1)]
    if both.size > 1:
        ax.fill_between(b[both].mean(1), a[both, 1], a[both, 0], color="0.85", zorder=0)
    ax.set(xlabel=f"{ds.attrs['measure_b']} (held)", ylabel=ds.attrs["measure_a"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    return figure


def summary_table(ds: xr.Dataset) -> str:
    """Per target: A at the upper and lower edge, the reached B and whether it was met, as text."""
    lines = [f"{'B target':>9} {'A max':>8} {'B@max':>8} {'met':>4} {'A min':>8} {'B@min':>8} {'met':>4} {'width':>7}"]
    for i, t in enumerate(ds["target"].values):
        a, b, m = ds["a_score"].values[i], ds["b_score"].values[i], ds["met"].values[i]
        lines.append(f"{t:9.3f} {a[0]:8.3f} {b[0]:8.3f} {'yes' if m[0] else 'no':>4} "
                     f"{a[1]:8.3f} {b[1]:8.3f} {'yes' if m[1] else 'no':>4} {a[0] - a[1]:7.3f}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """Add the ``encoders similarity region`` options to ``parser``."""
    parser.add_argument("--measure-a", type=str, default="cka_linear",
                        help="measure whose upper and lower edges are traced (y axis; default: cka_linear)")
    parser.add_argument("--measure-b", type=str, default="procrustes_angular_score",
                        help="measure held at each target value (x axis; default: procrustes_angular_score)")
    parser.add_argument("--targets", type=int, default=9,
                        help="number of B targets, evenly inside B's range (default: 9)")
    parser.add_argument("--b-values", type=float, nargs="+", default=None,
                        help="explicit B targets (overrides --targets); each must lie in B's range")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="a target is met when |B - target| <= tolerance at the end (default: 0.02)")
    parser.add_argument("--penalty", type=float, default=100.0,
                        help="weight of the (B - target)^2 penalty (default: 100)")
    add_target_arguments(parser, "region.nc and region.png")


def run(args: argparse.Namespace) -> int:
    """Run ``encoders similarity region``; bad input raises EncodersError (one line, exit 2), nothing written."""
    from encoders.errors import EncodersError
    from encoders.outputs import check_writable, save_figure, write_netcdf

    try:
        check_pair(args.measure_a, args.measure_b)
        if args.b_values is not None:
            b_targets = check_targets(args.measure_b, args.b_values)
        else:
            b_targets = default_targets(args.measure_b, args.targets)
        check_writable(args.out)
        target, source = read_target(args)
        ds = allowable_region(target, args.measure_a, args.measure_b, b_targets, args.tolerance, args.penalty,
                              args.steps, args.lr, args.seed, args.init_scale)
    except (ValueError, OSError) as err:
        raise EncodersError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    ds.attrs["target_data"] = source
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_netcdf(ds, out / "region.nc")
    save_figure(plot_region(ds, f"target: {source}"), out / "region.png")
    met = ds["met"].values
    print(f"region of {args.measure_a} (y) against {args.measure_b} (x, held) on {source} "
          f"({tuple(target.shape)}), {args.steps} steps, lr {args.lr}, penalty {args.penalty}, "
          f"tolerance {args.tolerance}; {int(met.sum())}/{met.size} held targets met; "
          f"{ds.attrs['seconds']:.1f} s")
    print(summary_table(ds))
    print(f"wrote {out / 'region.nc'} and {out / 'region.png'}")
    return 0


__all__ = ["EDGES", "RANGES", "allowable_region", "check_pair", "check_targets", "default_targets", "plot_region",
           "summary_table"]
