"""The twin and Cowley tables of varied exciting images and invariance manifolds, read from the products' files.

Made by the configs in experiments/invariances/ (after `encoders compare experiments/compare_{twin,cowley}.yaml`):

    encoders vei --config experiments/invariances/twin_vei_ga.yaml        # and twin_vei_egg, twin_manifold
    encoders manifold --config experiments/invariances/twin_manifold.yaml
    python benchmarks/invariance_tables.py runs/invariances_twin --data data/synthetic_v4.h5
    python benchmarks/invariance_tables.py runs/invariances_cowley

Per product: on the model, the share of images at >= the floor of the MEI's predicted rate and the diversity index;
on a twin, the share keeping the TRUE neuron >= 0.85 of its true MEI's rate, each image's true rate over the true rate
of the model's MEI (with --data: Ding et al.'s closed-loop check in silico, mean +- SD over neurons) and how far the images reach along the true invariance (phase, position; 1 = all of it); the natural-image
yardstick; for manifolds, the stopping rule and the groups found by alignment. Medians [quartiles] over neurons.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr


def spread(values) -> str:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return "-"
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{q2:.2f} [{q1:.2f}, {q3:.2f}]"


def mei_on_truth(ds: xr.Dataset, data: Path) -> np.ndarray:
    """True rate of the model's MEI (the floor's reference), per neuron."""
    import torch

    from encoders.ensemble import load_models
    from encoders.twin import Twin
    from encoders.twin.scoring import GroundTruthActivation

    model = load_models(ds.attrs["checkpoint"].split(", "))
    twin = Twin.from_file(data)
    targets = list(zip(ds.session.values.tolist(), ds.neuron_id.values.tolist()))
    energy = GroundTruthActivation(twin.truth, twin.columns(model, targets), twin.geometry(model))
    with torch.no_grad():
        return energy.activation(torch.as_tensor(ds.mei.values)).numpy()


def neuron_figure(folder: Path, neuron: str | None, out: Path, shown: int = 8) -> str:
    """One neuron: its MEI, GA and EGG VEIs and a walk along its manifold, each with the predicted rate over the MEI's
    (and on a twin the true rate over the true MEI's); `neuron` None: the first neuron all files share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from encoders.products.figures import show_image

    files = {name: xr.open_dataset(folder / f"{name}.nc").load() for name in ("vei_ga", "vei_egg", "manifold_1d")
             if (folder / f"{name}.nc").is_file()}
    ids = [set(f"{s}/{n}" for s, n in zip(ds.session.values, ds.neuron_id.values)) for ds in files.values()]
    common = [f"{s}/{n}" for s, n in zip(*(next(iter(files.values())).session.values, next(iter(files.values())).neuron_id.values))
              if f"{s}/{n}" in set.intersection(*ids)]
    neuron = neuron or common[0]
    figure, axes = plt.subplots(len(files), shown + 1, figsize=(1.35 * (shown + 1), 1.5 * len(files) + 0.6), squeeze=False,
                                layout="constrained")
    titles = {"vei_ga": "VEIs, gradient ascent", "vei_egg": "VEIs, EGG", "manifold_1d": "manifold, along the loop"}
    for row, (name, ds) in enumerate(files.items()):
        keys = [f"{s}/{n}" for s, n in zip(ds.session.values, ds.neuron_id.values)]
        cell = ds.isel(neuron=keys.index(neuron))
        truth = "ground_truth_relative_activation" in cell
        show_image(axes[row, 0], cell.mei_pixels.values)
        axes[row, 0].set_title(f"MEI\nr={float(cell.mei_activation):.1f}", fontsize=7)
        axes[row, 0].set_ylabel(titles[name], fontsize=7)
        along = "vei" if "vei" in cell.dims else "point"
        picks = np.unique(np.linspace(0, cell.sizes[along], shown, endpoint=False).astype(int))
        for col, i in enumerate(picks, start=1):
            image = cell.isel({along: int(i)})
            show_image(axes[row, col], image.image_pixels.values)
            text = f"{float(image.relative_activation):.2f}"
            if truth:
                text += f" / {float(image.ground_truth_relative_activation):.2f}"
            axes[row, col].set_title(text, fontsize=7)
        for col in range(len(picks) + 1, shown + 1):
            axes[row, col].axis("off")
    truth = any("ground_truth_relative_activation" in ds for ds in files.values())
    legend = "predicted rate / MEI's" + (" ; true rate / true MEI's" if truth else "")
    figure.suptitle(f"{neuron}: {legend}", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return neuron


def per_neuron(ds: xr.Dataset) -> dict[str, float]:
    """Per neuron id: the share of its images keeping the true neuron >= 0.85 of its true MEI's rate (empty without a twin)."""
    if "ground_truth_relative_activation" not in ds:
        return {}
    above = ds.ground_truth_relative_activation >= 0.85
    values = above.mean(above.dims[1]).values
    return {f"{s}/{n}": float(v) for s, n, v in zip(ds.session.values, ds.neuron_id.values, values)}


def paired(folder: Path) -> None:
    """Paired over the neurons two products share (Wilcoxon signed-rank): the share above 0.85 on the truth, and the
    diversity index of GA's and EGG's VEIs."""
    from scipy.stats import wilcoxon

    files = {name: xr.open_dataset(folder / f"{name}.nc").load() for name in ("vei_ga", "vei_egg", "manifold_1d")
             if (folder / f"{name}.nc").is_file()}
    lines = []
    for first, second, what in [("vei_ga", "vei_egg", "truth"), ("manifold_1d", "vei_ga", "truth"), ("vei_ga", "vei_egg", "index")]:
        if first not in files or second not in files:
            continue
        if what == "truth":
            a, b = per_neuron(files[first]), per_neuron(files[second])
        else:
            a, b = ({f"{s}/{n}": float(v) for s, n, v in zip(ds.session.values, ds.neuron_id.values, ds.diversity_index.values)}
                    if "diversity_index" in ds else {} for ds in (files[first], files[second]))
        keys = sorted(set(a) & set(b))
        if len(keys) < 5:
            continue
        d = np.array([a[k] - b[k] for k in keys])
        p = wilcoxon([a[k] for k in keys], [b[k] for k in keys]).pvalue if np.any(d != 0) else float("nan")
        label = "share >= 0.85 on the truth" if what == "truth" else "diversity index"
        lines.append(f"  {label}: {first} - {second} = {d.mean():+.3f} +- {d.std(ddof=1) / np.sqrt(len(d)):.3f} (SEM), "
                     f"p = {p:.2g}, {len(keys)} neurons")
    if lines:
        print("paired over neurons (Wilcoxon signed-rank):")
        print("\n".join(lines))


def groups_on_truth(ds: xr.Dataset, data: Path) -> str:
    """How the manifold groups match the twin's own: each true neuron's main shared V4 feature (adjusted Rand index)."""
    from sklearn.metrics import adjusted_rand_score

    from encoders.ensemble import load_models
    from encoders.twin import Twin

    model = load_models(ds.attrs["checkpoint"].split(", "))
    twin = Twin.from_file(data)
    columns = twin.columns(model, list(zip(ds.session.values.tolist(), ds.neuron_id.values.tolist()))).numpy()
    feature = twin.truth.main_feature[columns]
    return f"ARI {adjusted_rand_score(feature, ds.group.values):.2f} ({len(set(feature.tolist()))} true main features)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the products' folder (the configs' `out`)")
    parser.add_argument("--data", type=Path, help="the twin's data file: add the model's MEI on the truth")
    parser.add_argument("--figure", type=Path, help="also draw one neuron's MEI, VEIs and manifold walk into this PNG")
    parser.add_argument("--neuron", help="SESSION/NEURON_ID for --figure (default: the best-predicted one)")
    args = parser.parse_args()
    files = [args.folder / name for name in ("vei_ga.nc", "vei_egg.nc", "manifold_1d.nc") if (args.folder / name).is_file()]
    if not files:
        print(f"invariance_tables: {args.folder}: no vei_ga.nc, vei_egg.nc or manifold_1d.nc (run the configs first)", file=sys.stderr)
        return 2
    rows = []
    for path in files:
        with xr.open_dataset(path) as ds:
            ds = ds.load()
        name = {"vei_ga.nc": "VEIs, GA", "vei_egg.nc": "VEIs, EGG", "manifold_1d.nc": "manifold (1-D loop)"}[path.name]
        row = {"product": name, "neurons": ds.sizes["neuron"]}
        if "vei" in ds.dims:
            row["images"] = ds.sizes["vei"]
            row["above floor (model)"] = spread(ds.fraction_above)
            row["diversity index"] = spread(ds.diversity_index) if "diversity_index" in ds else "-"
            row["unreachable"] = len(json.loads(ds.attrs.get("unreachable", "[]")))
        else:
            row["images"] = ds.sizes["point"]
            row["above floor (model)"] = spread((ds.relative_activation >= ds.attrs["point_floor"]).mean("point"))
            row["met rule"] = f"{int(ds.reached.sum())}/{ds.sizes['neuron']}, step {spread(ds.stopped_at.where(ds.reached))}"
            if "group" in ds:
                sizes = sorted(np.unique(ds.group.values, return_counts=True)[1].tolist(), reverse=True)
                row["groups"] = f"{len(sizes)} (sizes {sizes})"
                if args.data is not None and "ground_truth_activation" in ds:
                    row["groups vs true main feature"] = groups_on_truth(ds, args.data)
        if "ground_truth_relative_activation" in ds:
            if args.data is not None:  # Ding et al.'s closed loop shows both the MEI and its VEIs to the neuron
                mei_rate = mei_on_truth(ds, args.data)
                row["model MEI: true / true MEI's"] = spread(mei_rate / ds.true_mei_activation.values)
                ratio = ds.ground_truth_activation.values / mei_rate[:, None]
                row["true rate / model MEI's"] = f"{ratio.mean():.2f} +- {ratio.mean(1).std():.2f}"
            above = ds.ground_truth_relative_activation >= 0.85
            row["true >= 0.85"] = spread(above.mean(above.dims[1]))
            row["true >= 0.85, all images"] = f"{float(above.mean()):.2f}"
            row["true phase arc"] = spread(ds.true_phase_arc)
            row["phase reach"] = spread(ds.phase_reach)
            row["true position extent (px)"] = spread(ds.true_position_extent)
            row["position reach"] = spread(ds.position_reach)
        if "natural_fraction" in ds:
            for j, level in enumerate(ds.level.values.tolist()):
                row[f"natural >= {level:g} MEI"] = spread(ds.natural_fraction.isel(level=j))
                if "ground_truth_natural_fraction" in ds:
                    row[f"natural >= {level:g} true MEI (truth)"] = spread(ds.ground_truth_natural_fraction.isel(level=j))
        rows.append(row)
    paired(args.folder)
    if args.figure is not None:
        print(f"figure of {neuron_figure(args.folder, args.neuron, args.figure)} -> {args.figure}")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    width = max(len(k) for k in keys)
    print(f"{args.folder}: medians [quartiles] over neurons")
    print(f"{'':{width}}  " + "  ".join(f"{row['product']:>24}" for row in rows))
    for key in keys[1:]:
        print(f"{key:{width}}  " + "  ".join(f"{str(row.get(key, '-')):>24}" for row in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
