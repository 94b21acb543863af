"""Optimise a synthetic dataset to maximise a similarity score against a target (Cloos et al. 2024).

Starting from random Gaussian data X of the target's shape, Adam ascends the chosen score
against the target Y and we record, at every step, how much of each principal component of Y is
linearly recoverable from X. Different measures reward different PCs: CKA can be near 1 when
only the top PCs are captured, while angular Procrustes needs the low-variance PCs as well.

CLI (wired as ``encoders similarity optimize``)::

    encoders similarity optimize --measure cka_linear --steps 500 --lr 0.01 --seed 0 --out DIR \
        [--target FILE.nc --variable NAME | --synthetic-target --stimuli 200 --units 50 \
         --spectrum-decay 1.0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from encoders.outputs import atomic_write, write_netcdf
from encoders.similarity import DIFFERENTIABLE, HIGHER_IS_BETTER, MEASURES, get_measure
from encoders.similarity.centering import as_representation, center

CAPTURED_DEFINITION = (
    "captured[step, i] = R^2 of the least-squares regression (with intercept) of the target's "
    "i-th principal-component score u_i (unit vector in stimulus space, from the SVD of the "
    "centred target) onto the synthetic data X at that step = ||P_X u_i||^2, P_X the orthogonal "
    "projector onto the column space of the centred X"
)


def synthetic_target(stimuli: int, units: int, spectrum_decay: float, seed: int) -> Tensor:
    """Gaussian (stimuli, units) data whose PC variances are exactly λ_i ∝ i^-spectrum_decay.

    Y = sqrt(stimuli - 1) · Q diag(sqrt λ) Rᵀ with Q (stimuli, k) orthonormal, centred columns
    from a Gaussian matrix and R (units, k) a random orthonormal frame, k = min(units,
    stimuli - 1); λ is normalised to sum to ``units`` (average unit variance 1). Float64,
    zero mean over stimuli.
    """
    if stimuli < 3 or units < 1:
        raise ValueError(f"need stimuli >= 3 and units >= 1, got {stimuli} and {units}")
    if spectrum_decay < 0:
        raise ValueError(f"spectrum_decay must be >= 0, got {spectrum_decay}")
    g = torch.Generator().manual_seed(seed)
    k = min(units, stimuli - 1)
    Z = torch.randn(stimuli, k, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(center(Z)).Q  # combinations of centred columns stay centred
    R = torch.linalg.qr(torch.randn(units, k, generator=g, dtype=torch.float64)).Q
    lam = torch.arange(1, k + 1, dtype=torch.float64).pow(-spectrum_decay)
    lam = lam * units / lam.sum()
    return (stimuli - 1) ** 0.5 * (Q * lam.sqrt()) @ R.mT


def _target_pcs(Y: Tensor) -> tuple[Tensor, Tensor]:
    """Unit PC score vectors (stimuli, K) of the centred target and their variance ratios (K,)."""
    U, S, _ = torch.linalg.svd(center(Y), full_matrices=False)
    keep = S > max(Y.shape) * torch.finfo(Y.dtype).eps * S.max()
    var = S[keep].pow(2)
    return U[:, keep], var / var.sum()


def _captured(X: Tensor, pcs: Tensor) -> Tensor:
    """||P_X u_i||² for every column u_i of ``pcs``: see ``CAPTURED_DEFINITION``."""
    U, S, _ = torch.linalg.svd(center(X), full_matrices=False)
    basis = U[:, S > max(X.shape) * torch.finfo(X.dtype).eps * S.max()]
    return (basis.mT @ pcs).pow(2).sum(0)


def optimize_score(
    target: Tensor,
    measure: str,
    steps: int,
    lr: float,
    seed: int,
    init_scale: float = 1.0,
) -> xr.Dataset:
    """Ascend ``measure`` (descend it for distances) between a synthetic X and the target with Adam.

    X starts as ``init_scale`` · standard Gaussian of the target's shape (torch generator seeded
    with ``seed``) and is updated with ``torch.optim.Adam(lr=lr)`` for ``steps`` steps on
    -measure(X, Y) (or +measure for distances, see ``HIGHER_IS_BETTER``).

    Returns:
        Dataset with coords step = 0..steps (state after that many updates) and component =
        1..K (target PCs by decreasing variance, K = rank of the centred target); variables
        ``score(step)`` (the measure's value), ``captured(step, component)`` (see
        ``CAPTURED_DEFINITION``: regression R² of PC i's score from X, in [0, 1]) and
        ``target_variance_ratio(component)``; attrs measure, lr, seed, steps, init_scale,
        higher_is_better (0/1), captured_definition.

    Raises:
        ValueError: unknown or non-differentiable measure, steps < 0, lr <= 0, bad target.
    """
    fn = get_measure(measure)
    if not DIFFERENTIABLE[measure]:
        raise ValueError(f"measure {measure!r} has no gradient and cannot be optimised")
    if steps < 0 or lr <= 0 or init_scale <= 0:
        raise ValueError(
            f"need steps >= 0, lr > 0 and init_scale > 0, got {steps}, {lr}, {init_scale}"
        )
    Y = as_representation(target, "target", min_stimuli=3).detach()
    pcs, ratio = _target_pcs(Y)
    g = torch.Generator().manual_seed(seed)
    X = torch.nn.Parameter(init_scale * torch.randn(Y.shape, generator=g, dtype=torch.float64))
    optimizer = torch.optim.Adam([X], lr=lr)
    sign = -1.0 if HIGHER_IS_BETTER[measure] else 1.0
    scores = np.empty(steps + 1)
    captured = np.empty((steps + 1, pcs.shape[1]))
    for step in range(steps + 1):
        value = fn(X, Y)
        scores[step] = value.item()
        captured[step] = _captured(X.detach(), pcs).numpy()
        if step == steps:
            break
        optimizer.zero_grad()
        (sign * value).backward()
        optimizer.step()
    return xr.Dataset(
        {
            "score": ("step", scores),
            "captured": (("step", "component"), captured),
            "target_variance_ratio": ("component", ratio.numpy()),
        },
        coords={"step": np.arange(steps + 1), "component": np.arange(1, pcs.shape[1] + 1)},
        attrs={
            "measure": measure,
            "lr": float(lr),
            "seed": int(seed),
            "steps": int(steps),
            "init_scale": float(init_scale),
            "higher_is_better": int(HIGHER_IS_BETTER[measure]),
            "captured_definition": CAPTURED_DEFINITION,
        },
    )


def plot_optimization(ds: xr.Dataset, path: str | Path) -> None:
    """Save a PNG: the score against step, and captured variance per target PC against step.

    Uses the Agg canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_score, ax_cap = fig.subplots(1, 2, width_ratios=(1, 1.4))
    ax_score.plot(ds["step"], ds["score"], color="k")
    ax_score.set(xlabel="step", ylabel=str(ds.attrs.get("measure", "score")), title="score")
    steps, comps = ds["step"].values, ds["component"].values
    image = ax_cap.imshow(
        ds["captured"].values.T,
        aspect="auto",
        origin="lower",
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, comps[0] - 0.5, comps[-1] + 0.5),
        interpolation="nearest",
    )
    ax_cap.set(xlabel="step", ylabel="target PC (by decreasing variance)",
               title="variance of each target PC captured by X (R²)")
    ax_cap.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=ax_cap, label="captured")
    fig.savefig(path, format="png", dpi=110)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``encoders similarity optimize`` options to ``parser``."""
    parser.add_argument("--measure", default="cka_linear", choices=sorted(MEASURES),
                        help="similarity measure to optimise (default: cka_linear)")
    parser.add_argument("--steps", type=int, default=500, help="Adam steps (default: 500)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default: 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial X (default: 0)")
    parser.add_argument("--init-scale", type=float, default=1.0,
                        help="standard deviation of the initial X (default: 1.0)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory for optimization.nc and optimization.png")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--target", type=Path,
                        help="NetCDF file holding a 2-D (stimulus, unit) target array")
    source.add_argument("--synthetic-target", action="store_true",
                        help="use Gaussian data with a power-law PC spectrum as the target")
    parser.add_argument("--variable", help="variable of --target to use (default: its only one)")
    parser.add_argument("--stimuli", type=int, default=200, help="synthetic stimuli (default: 200)")
    parser.add_argument("--units", type=int, default=50, help="synthetic units (default: 50)")
    parser.add_argument("--spectrum-decay", type=float, default=1.0,
                        help="synthetic PC variances ∝ i^-decay (default: 1.0)")
    parser.add_argument("--target-seed", type=int, default=1234,
                        help="seed of the synthetic target, distinct from --seed (default: 1234)")


def load_target(path: Path, variable: str | None) -> Tensor:
    """Read a 2-D (stimulus, unit) array from a NetCDF file as a float64 tensor.

    Raises:
        ValueError: missing variable, ambiguous file (several variables and no ``variable``),
            or an array that is not 2-D.
    """
    with xr.open_dataset(path) as ds:
        names = list(ds.data_vars)
        if variable is None:
            if len(names) != 1:
                raise ValueError(f"{path} holds variables {names}; choose one with --variable")
            variable = names[0]
        if variable not in ds:
            raise ValueError(f"{path} has no variable {variable!r}; it holds {names}")
        array = ds[variable]
        if array.ndim != 2:
            raise ValueError(
                f"target {variable!r} must be 2-D (stimulus, unit), got dims {array.dims}"
            )
        return torch.from_numpy(np.asarray(array.values, dtype=np.float64))


def summary_table(ds: xr.Dataset, rows: int = 5, pcs: int = 5) -> str:
    """A small text table of the score and the captured variance of the top PCs at a few steps."""
    steps = ds["step"].values
    last = len(steps) - 1
    picks = sorted({int(steps[round(i * last / max(rows - 1, 1))]) for i in range(rows)})
    comps = ds["component"].values[:pcs]
    header = f"{'step':>6} {'score':>10} " + " ".join(f"{'PC' + str(c):>6}" for c in comps)
    header += f" {'mean':>6}"
    lines = [header]
    for s in picks:
        cap = ds["captured"].sel(step=s)
        cells = " ".join(f"{cap.sel(component=c).item():6.3f}" for c in comps)
        score = ds["score"].sel(step=s).item()
        lines.append(f"{s:6d} {score:10.6f} {cells} {cap.mean().item():6.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``encoders similarity optimize``; bad input raises EncodersError (one line, exit 2), nothing written."""
    from encoders.errors import EncodersError
    from encoders.outputs import check_writable

    if args.steps < 1 or not args.lr > 0 or not args.init_scale > 0:
        raise EncodersError(f"--steps, --lr, --init-scale: need steps >= 1 and positive lr and init scale, "
                            f"got {args.steps}, {args.lr}, {args.init_scale}")
    check_writable(args.out)
    try:
        if args.synthetic_target:
            target = synthetic_target(
                args.stimuli, args.units, args.spectrum_decay, args.target_seed
            )
            source = (f"synthetic {args.stimuli}x{args.units}, decay {args.spectrum_decay}, "
                      f"seed {args.target_seed}")
        else:
            target = load_target(args.target, args.variable)
            source = f"{args.target}" + (f":{args.variable}" if args.variable else "")
        if not torch.isfinite(target).all():
            bad = int((~torch.isfinite(target)).sum())
            raise EncodersError(f"{source}: the target holds {bad} NaN or infinite value(s); drop or impute them first")
        ds = optimize_score(target, args.measure, args.steps, args.lr, args.seed, args.init_scale)
    except (ValueError, OSError) as err:
        raise EncodersError(str(err)) from None
    ds.attrs["target"] = source
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_netcdf(ds, out / "optimization.nc")
    atomic_write(out / "optimization.png", lambda p: plot_optimization(ds, p))
    print(f"{args.measure} vs {source}: {tuple(target.shape)}, {args.steps} steps, lr {args.lr}")
    print(summary_table(ds))
    print(f"wrote {out / 'optimization.nc'} and {out / 'optimization.png'}")
    return 0
