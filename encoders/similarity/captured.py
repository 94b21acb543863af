"""What a similarity score means, per principal component (Cloos et al. 2024, Fig. "captured PCs").

For a target X (stimuli x neurons) and each chosen measure, synthetic data Y starts as Gaussian
noise of X's shape and is optimised with Adam towards X (:func:`encoders.similarity.optimize.optimize_score`).
At every step we record the score and, for each of the top k principal components of X, the
fraction of that component's variance that Y explains:

    explained[i] = R² of the least-squares regression (with intercept) of X's i-th PC score
                   x_i = X_c v_i (X_c = X centred over stimuli, v_i its i-th right singular vector)
                   onto Y = 1 - ||x_i - P_Y x_i||² / ||x_i||² = ||P_Y u_i||²,

P_Y the orthogonal projector onto the column space of the centred Y, u_i = x_i / ||x_i||. This is
diffscore's ``projected_r2`` (``analysis/captured_pcs.py``, linear alignment, ``orth=False``),
written independently here. A component counts as *captured* once ``explained`` reaches the
threshold; the default ``"half"`` is diffscore's: half-way between the component's explained
variance at step 0 (the noise initialisation) and 1. ``score_at_capture[i]`` is the score at the
first step where component i reaches it, linearly interpolated between that step and the one
before (in explained variance), NaN if it never does.

CLI (wired as ``encoders similarity captured``)::

    encoders similarity captured --out DIR [--measures cka_linear nbs ...] [--components 10] \
        [--steps 300 --lr 0.05 --seed 0 --threshold half] \
        (--data FILE --session S [--tier test] | --synthetic-target [--stimuli 100 --units 20 ...])
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from encoders.similarity import DIFFERENTIABLE, HIGHER_IS_BETTER, MEASURES, get_measure
from encoders.similarity.centering import as_representation
from encoders.similarity.optimize import _captured, _target_pcs, optimize_score, synthetic_target

DEFAULT_MEASURES: tuple[str, ...] = ("cka_linear", "nbs", "procrustes_angular_score", "rsa_pearson")
DEFAULT_THRESHOLD = "half"
EXPLAINED_DEFINITION = (
    "explained[i] = R^2 of the least-squares regression (with intercept) of the target's i-th "
    "principal-component score (centred target times its i-th right singular vector) onto the "
    "synthetic data = ||P_Y u_i||^2, P_Y the projector onto the centred synthetic data's column "
    "space, u_i the unit PC score vector; diffscore's projected_r2 (orth=False)"
)


def explained_per_pc(target: Tensor, other: Tensor, components: int) -> np.ndarray:
    """Fraction of the variance of each of the top ``components`` PCs of ``target`` that ``other`` explains.

    See :data:`EXPLAINED_DEFINITION`. Both are (stimuli, units) with the same stimuli; the result
    has length ``components``, NaN past the rank of the centred target.
    """
    X = as_representation(target, "target", min_stimuli=2).detach().double()
    Y = as_representation(other, "other", min_stimuli=2).detach().double()
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"target and other need the same stimuli, got {X.shape[0]} and {Y.shape[0]}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    out = np.full(components, np.nan)
    if not torch.isfinite(X).all() or not torch.isfinite(Y).all():
        return out
    pcs, _ = _target_pcs(X)  # no columns for a constant target; a constant Y explains 0
    pcs = pcs[:, :components]
    out[: pcs.shape[1]] = _captured(Y, pcs).numpy()
    return out


CROSS_VALIDATED_DEFINITION = (
    "explained[i] = cross-validated R^2 of the least-squares regression (with intercept, minimum-norm) of the "
    "target's i-th principal-component score onto the representation: fitted on k-1 folds of the stimuli, "
    "predicted on the held-out fold, R^2 = 1 - sum of squared errors / sum of squares over all stimuli "
    "(negative: worse than predicting the mean); the PCs are those of the whole target"
)


def cross_validated_explained_per_pc(
    target: Tensor, other: Tensor, components: int, folds: int = 5, seed: int = 0,
) -> np.ndarray:
    """`explained_per_pc` evaluated out of sample (:data:`CROSS_VALIDATED_DEFINITION`).

    In-sample, a representation with p features explains about p / n_stimuli of any PC by chance
    (all of it once p >= n_stimuli - 1); a model's predictions are not fitted to the target, so the
    regression from them to the target's PCs must be judged on stimuli it was not fitted on.
    Folds are a seeded permutation of the stimuli. NaN past the rank of the centred target.
    """
    X = as_representation(target, "target", min_stimuli=2).detach().double()
    Y = as_representation(other, "other", min_stimuli=2).detach().double()
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"target and other need the same stimuli, got {n} and {Y.shape[0]}")
    if components < 1 or folds < 2:
        raise ValueError(f"components must be >= 1 and folds >= 2, got {components} and {folds}")
    out = np.full(components, np.nan)
    if n < folds or not torch.isfinite(X).all() or not torch.isfinite(Y).all():
        return out
    centred = X - X.mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    rank = int((singular > singular[0] * 1e-10).sum()) if singular.numel() and singular[0] > 0 else 0
    k = min(components, rank)
    if k == 0:
        return out
    scores = centred @ vh[:k].T  # (n, k) PC scores
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    predicted = torch.empty_like(scores)
    design = torch.cat([Y, torch.ones(n, 1, dtype=Y.dtype)], 1)
    for held in order.chunk(folds):
        fit = torch.ones(n, dtype=torch.bool)
        fit[held] = False
        coefficients = torch.linalg.pinv(design[fit]) @ scores[fit]  # minimum-norm least squares
        predicted[held] = design[held] @ coefficients
    total = scores.pow(2).sum(0)  # scores are centred over all stimuli
    out[:k] = (1.0 - (scores - predicted).pow(2).sum(0) / total).numpy()
    return out


def threshold_levels(threshold: str | float, start: np.ndarray) -> np.ndarray:
    """The explained variance each component must reach: ``(start + 1) / 2`` for "half", else the number."""
    if threshold == "half":
        return (start + 1.0) / 2.0
    return np.full_like(start, float(threshold))


def parse_threshold(value: str | float) -> str | float:
    """"half" or a number in (0, 1]; ValueError otherwise."""
    if isinstance(value, str) and value.strip().lower() == "half":
        return "half"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be 'half' or a number in (0, 1], got {value!r}") from None
    if not 0.0 < number <= 1.0:
        raise ValueError(f"threshold must be 'half' or a number in (0, 1], got {value!r}")
    return number


def _first_capture(scores: np.ndarray, explained: np.ndarray, level: float) -> tuple[float, float]:
    """(score, step) where ``explained`` first reaches ``level``, interpolated; NaNs if never."""
    reached = np.flatnonzero(explained >= level)
    if reached.size == 0:
        return math.nan, math.nan
    s = int(reached[0])
    if s == 0:
        return float(scores[0]), 0.0
    e0, e1 = explained[s - 1], explained[s]
    t = (level - e0) / (e1 - e0) if e1 != e0 else 1.0
    return float(scores[s - 1] + t * (scores[s] - scores[s - 1])), float(s - 1 + t)


def check_measures(measures: Sequence[str], n_stimuli: int) -> None:
    """ValueError for an unknown, duplicate or non-differentiable measure, or too few stimuli for one."""
    if not measures:
        raise ValueError(f"measures: name at least one of {sorted(MEASURES)}")
    for name in measures:
        get_measure(name)  # unknown: the message lists the known ones
    if len(set(measures)) != len(measures):
        raise ValueError(f"measures has duplicates: {list(measures)}")
    for name in measures:
        if not DIFFERENTIABLE[name]:
            raise ValueError(f"measure {name!r} has no gradient and cannot be optimised; "
                             f"choose from {sorted(m for m in MEASURES if DIFFERENTIABLE[m])}")
    # each measure's own check on a probe of the target's size (e.g. unbiased CKA needs >= 4 stimuli)
    probe = torch.randn(n_stimuli, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in measures:
        try:
            MEASURES[name](probe, probe)
        except ValueError as error:
            raise ValueError(f"measure {name!r} cannot score {n_stimuli} stimuli: {error}") from None
    if n_stimuli < 3:
        raise ValueError(f"the target needs at least 3 stimuli, got {n_stimuli}")


def capture_curves(
    target: Tensor,
    measures: Sequence[str] = DEFAULT_MEASURES,
    components: int = 10,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
    threshold: str | float = DEFAULT_THRESHOLD,
    init_scale: float = 1.0,
) -> xr.Dataset:
    """Optimise synthetic data towards ``target`` with each measure; the explained variance of its top PCs per step.

    Every measure starts from the same noise (``seed``). Returns a Dataset with dims measure, step
    (0..steps), component (1..k, by decreasing target variance): ``score`` (measure, step),
    ``explained`` (measure, step, component; :data:`EXPLAINED_DEFINITION`), ``threshold``
    (measure, component: the level that counts as captured), ``score_at_capture`` and
    ``step_at_capture`` (measure, component; interpolated, NaN if never reached),
    ``target_variance_ratio`` (component) and coordinate ``higher_is_better`` (measure).

    Raises:
        ValueError: bad measure(s), too few stimuli, NaN target, components < 1 or above the
            target's rank, steps < 1, lr <= 0, bad threshold.
    """
    measures = list(measures)
    X = as_representation(target, "target", min_stimuli=1).detach().double()
    if not torch.isfinite(X).all():
        bad = int((~torch.isfinite(X)).sum())
        raise ValueError(f"the target holds {bad} NaN or infinite value(s); drop or impute them first")
    check_measures(measures, X.shape[0])
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if steps < 1 or not lr > 0 or not init_scale > 0:
        raise ValueError(f"need steps >= 1, lr > 0 and init_scale > 0, got {steps}, {lr}, {init_scale}")
    threshold = parse_threshold(threshold)
    pcs, ratio = _target_pcs(X)
    if components > pcs.shape[1]:
        raise ValueError(f"components {components} exceeds the target's {pcs.shape[1]} principal components "
                         f"(rank of the centred {X.shape[0]} x {X.shape[1]} target)")
    k = components
    score = np.empty((len(measures), steps + 1))
    explained = np.empty((len(measures), steps + 1, k))
    for m, name in enumerate(measures):
        run = optimize_score(X, name, steps, lr, seed, init_scale)
        score[m] = run["score"].values
        explained[m] = run["captured"].values[:, :k]
    levels = np.stack([threshold_levels(threshold, explained[m, 0]) for m in range(len(measures))])
    at_score = np.full((len(measures), k), np.nan)
    at_step = np.full((len(measures), k), np.nan)
    for m in range(len(measures)):
        for i in range(k):
            at_score[m, i], at_step[m, i] = _first_capture(score[m], explained[m, :, i], levels[m, i])
    threshold_doc = ("half: half-way between the explained variance at step 0 and 1 (diffscore's default)"
                     if threshold == "half" else f"{threshold}")
    return xr.Dataset(
        {
            "score": (("measure", "step"), score, {"long_name": "similarity score of the synthetic data with the target",
                                                   "units": "1"}),
            "explained": (("measure", "step", "component"), explained,
                          {"long_name": "fraction of the target PC's variance explained by the synthetic data (R^2)",
                           "units": "1", "definition": EXPLAINED_DEFINITION}),
            "threshold": (("measure", "component"), levels,
                          {"long_name": "explained variance at which the component counts as captured", "units": "1"}),
            "score_at_capture": (("measure", "component"), at_score,
                                 {"long_name": "score when the component is first captured (interpolated; NaN: never)",
                                  "units": "1"}),
            "step_at_capture": (("measure", "component"), at_step,
                                {"long_name": "step when the component is first captured (interpolated; NaN: never)",
                                 "units": "step"}),
            "target_variance_ratio": ("component", ratio[:k].numpy(),
                                      {"long_name": "fraction of the target's total variance in the PC", "units": "1"}),
        },
        coords={
            "measure": measures,
            "step": np.arange(steps + 1),
            "component": np.arange(1, k + 1),
            "higher_is_better": ("measure", [bool(HIGHER_IS_BETTER[m]) for m in measures]),
        },
        attrs={
            "explained_definition": EXPLAINED_DEFINITION,
            "threshold": threshold_doc,
            "optimizer": f"Adam(lr={lr}) from init_scale * N(0, 1) (torch seed {seed}), the same start for every "
                         "measure; distances (higher_is_better false) are minimised",
            "lr": float(lr), "seed": int(seed), "steps": int(steps), "init_scale": float(init_scale),
            "n_stimuli": int(X.shape[0]), "n_units": int(X.shape[1]),
        },
    )


def plot_captured(ds: xr.Dataset, title: str = ""):
    """One panel per measure: explained variance of each target PC (y) against the score (x), as in the paper."""
    import matplotlib.pyplot as plt
    from matplotlib import cm
    from matplotlib.colors import LogNorm

    measures = list(ds["measure"].values)
    cols = min(len(measures), 4)
    rows = -(-len(measures) // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 1.2, 3.0 * rows), squeeze=False,
                                layout="constrained", sharey=True)
    ratio = ds["target_variance_ratio"].values
    norm = LogNorm(vmin=max(ratio.min(), 1e-12), vmax=ratio.max()) if ratio.min() < ratio.max() else None
    cmap = plt.get_cmap("viridis")
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, measures):
        run = ds.sel(measure=name)
        for i, c in enumerate(ds["component"].values):
            color = cmap(norm(ratio[i])) if norm is not None else cmap(0.5)
            ax.plot(run["score"].values, run["explained"].values[:, i], color=color, lw=1.2)
            at = float(run["score_at_capture"].values[i])
            if np.isfinite(at):
                ax.axvline(at, color=color, lw=0.6, ls="--", alpha=0.6)
        higher = bool(run["higher_is_better"])
        ax.set(xlabel=f"{name}{'' if higher else ' (lower = better)'}", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("explained variance of target PC (R²)")
    if norm is not None:
        figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(),
                        label="PC's fraction of target variance")
    figure.suptitle(title + " (dashed: score at capture)", fontsize=10)
    return figure


def summary_table(ds: xr.Dataset, pcs: int = 5) -> str:
    """Score at which each of the first PCs is captured, per measure, as text."""
    comps = ds["component"].values[:pcs]
    lines = [f"{'measure':<26} {'final':>8} " + " ".join(f"{'PC' + str(c):>8}" for c in comps)]
    for name in ds["measure"].values:
        run = ds.sel(measure=name)
        cells = " ".join(f"{v:8.3f}" if np.isfinite(v) else f"{'never':>8}"
                         for v in run["score_at_capture"].values[:pcs])
        lines.append(f"{str(name):<26} {float(run['score'].values[-1]):8.3f} {cells}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """Add the ``encoders similarity captured`` options to ``parser``."""
    parser.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES),
                        help=f"measures to optimise (default: {' '.join(DEFAULT_MEASURES)})")
    parser.add_argument("--components", type=int, default=10,
                        help="number k of top target PCs to follow (default: 10)")
    parser.add_argument("--threshold", type=str, default=DEFAULT_THRESHOLD,
                        help="explained variance that counts as captured: 'half' (diffscore: half-way from the "
                             "step-0 value to 1) or a number in (0, 1] (default: half)")
    add_target_arguments(parser, "captured.nc and captured.png")


def add_target_arguments(parser, outputs: str) -> None:
    """The options `captured` and `region` share: the optimiser's start and steps, the target, the output folder."""
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default: 300)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default: 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: 0)")
    parser.add_argument("--init-scale", type=float, default=1.0,
                        help="standard deviation of the initial noise (default: 1.0)")
    parser.add_argument("--out", type=Path, required=True, help=f"output folder for {outputs}")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="dataset file: the target is a session's responses in --tier")
    source.add_argument("--synthetic-target", action="store_true",
                        help="use Gaussian data with a power-law PC spectrum as the target")
    parser.add_argument("--session", type=str, help="session of --data")
    parser.add_argument("--tier", type=str, default="test", help="tier of --data (default: test)")
    parser.add_argument("--stimuli", type=int, default=100, help="synthetic stimuli (default: 100)")
    parser.add_argument("--units", type=int, default=20, help="synthetic units (default: 20)")
    parser.add_argument("--spectrum-decay", type=float, default=1.0,
                        help="synthetic PC variances ∝ i^-decay (default: 1.0)")
    parser.add_argument("--target-seed", type=int, default=1234,
                        help="seed of the synthetic target, distinct from --seed (default: 1234)")


def read_target(args: argparse.Namespace) -> tuple[Tensor, str]:
    """(target responses, a description of them) from `add_target_arguments`' options; ValueError for NaN responses."""
    if args.synthetic_target:
        target = synthetic_target(args.stimuli, args.units, args.spectrum_decay, args.target_seed)
        source = f"synthetic {args.stimuli}x{args.units}, decay {args.spectrum_decay}, seed {args.target_seed}"
    else:
        target = load_responses(args.data, args.session, args.tier)
        source = f"{args.data}, session {args.session}, {args.tier} tier"
    if not torch.isfinite(target).all():
        bad = int((~torch.isfinite(target)).sum())
        raise ValueError(f"{source}: the responses hold {bad} NaN or infinite value(s); drop or impute them first")
    return target, source


def load_responses(path: Path, session: str | None, tier: str) -> Tensor:
    """A session's responses (stimuli x neurons, averaged over repeats) in one tier of a dataset file."""
    from encoders.datasets.io import list_sessions, read_arrays
    from encoders.datasets.schema import TIERS

    if not Path(path).is_file():
        raise ValueError(f"--data {path}: no such file")
    sessions = list_sessions(path)
    if session is None:
        raise ValueError(f"--data {path}: choose a session with --session; the file has {sessions}")
    if str(session) not in sessions:
        raise ValueError(f"--data {path}: no session {session!r}; the file has {sessions}")
    if tier not in TIERS:
        raise ValueError(f"--tier must be one of {list(TIERS)}, got {tier!r}")
    arrays = read_arrays(path, str(session), ["responses", "tier"])
    rows = np.asarray(arrays["tier"]).astype(str) == tier
    return torch.from_numpy(np.asarray(arrays["responses"][rows], dtype=np.float64))


def run(args: argparse.Namespace) -> int:
    """Run ``encoders similarity captured``; bad input raises EncodersError (one line, exit 2), nothing written."""
    from encoders.errors import EncodersError
    from encoders.outputs import check_writable, save_figure, write_netcdf

    measures = list(args.measures) if isinstance(args.measures, (list, tuple)) else [args.measures]
    try:
        if args.components < 1:
            raise ValueError(f"--components must be >= 1, got {args.components}")
        threshold = parse_threshold(args.threshold)
        check_writable(args.out)
        target, source = read_target(args)
        ds = capture_curves(target, measures, args.components, args.steps, args.lr, args.seed, threshold,
                            args.init_scale)
    except (ValueError, OSError) as err:
        raise EncodersError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    ds.attrs["target"] = source
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_netcdf(ds, out / "captured.nc")
    save_figure(plot_captured(ds, f"target: {source}"), out / "captured.png")
    print(f"captured PCs of {source} ({tuple(target.shape)}), {args.steps} steps, lr {args.lr}, "
          f"threshold {ds.attrs['threshold']}; score at capture:")
    print(summary_table(ds))
    print(f"wrote {out / 'captured.nc'} and {out / 'captured.png'}")
    return 0


__all__ = [
    "DEFAULT_MEASURES",
    "EXPLAINED_DEFINITION",
    "capture_curves",
    "explained_per_pc",
    "parse_threshold",
    "plot_captured",
    "threshold_levels",
]
