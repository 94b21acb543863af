"""V4 accuracy at a fixed wall-clock budget: train configs on a dataset, print test correlation, speed and memory.

    python benchmarks/v4_accuracy.py experiments/cowley_gaussian.yaml experiments/cowley_attention.yaml \\
        --data data/cowley2023_v4.h5 --minutes 28 --threads 1 --repeat 2 --jobs 2

Each (config, seed) trains in its own process (`train.py fit`, which tests the best checkpoint at the end)
with the same number of torch threads and the same `trainer.max_time`; the config is the shipped YAML with
only the run folder, seed, budget, data path and logger changed (the exact YAML run is saved next to its
results). `--jobs 2` runs two trainings at once (fill 2 cores with 1 thread each); every job then shares
the machine the same way, so times stay comparable between configs of one call, not across calls.

Prints per-session and mean test correlation (and FEVE where the test images have repeats), epochs done,
seconds per epoch (training and validation), training images/s and peak RSS; writes `results.nc` (all
numbers, labelled), `results.md` (the tables) and `learning_curves.png` (validation correlation against
wall-clock time) under --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from encoders.outputs import save_figure, write_netcdf, write_text  # noqa: E402

DROPPED_CALLBACKS = ("RichProgressBar", "ReadoutFigures", "Products", "LearningRateMonitor")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="training configs (experiments/*.yaml)")
    parser.add_argument("--data", type=Path, default=Path("data/cowley2023_v4.h5"), help="dataset file for every config")
    parser.add_argument("--minutes", type=float, default=28.0, help="wall-clock budget per training (trainer.max_time)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--repeat", type=int, default=1, help="seeds per config (0, 1, ...)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at the same time")
    parser.add_argument("--max-epochs", type=int, default=None, help="override trainer.max_epochs (e.g. equal-epoch comparisons)")
    parser.add_argument("--out", type=Path, default=Path("runs/v4_accuracy"))
    args = parser.parse_args(argv)
    for config in args.configs:
        if not config.is_file():
            parser.exit(2, f"{config}: config file not found\n")
    if not args.data.is_file():
        parser.exit(2, f"{args.data}: data file not found (make data/cowley2023_v4.h5)\n")
    if args.minutes <= 0 or args.threads < 1 or args.repeat < 1 or args.jobs < 1:
        parser.exit(2, "--minutes, --threads, --repeat and --jobs must be positive\n")
    if len({c.stem for c in args.configs}) != len(args.configs):
        parser.exit(2, "configs must have distinct file names (they name the run folders)\n")
    return args


def max_time(minutes: float) -> str:
    seconds = int(round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_config(config: Path, seed: int, run_dir: Path, args: argparse.Namespace) -> Path:
    """The shipped config with only run folder, seed, budget, data and logger changed; written into run_dir."""
    spec = yaml.safe_load(config.read_text())
    spec["seed_everything"] = seed
    trainer = spec.setdefault("trainer", {})
    trainer.update(default_root_dir=str(run_dir), max_time=max_time(args.minutes), enable_progress_bar=False,
                   enable_model_summary=False)
    if args.max_epochs is not None:
        trainer["max_epochs"] = args.max_epochs
    trainer["logger"] = {"class_path": "pytorch_lightning.loggers.CSVLogger",
                         "init_args": {"save_dir": str(run_dir), "name": "", "version": ""}}
    callbacks = []
    for callback in trainer.get("callbacks", []):
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name in DROPPED_CALLBACKS:
            continue
        if name == "ModelCheckpoint":
            callback = {**callback, "init_args": {**callback.get("init_args", {}), "dirpath": str(run_dir / "checkpoints")}}
        callbacks.append(callback)
    callbacks.append({"class_path": "encoders.callbacks.EpochTimer"})
    trainer["callbacks"] = callbacks
    spec.setdefault("data", {})["path"] = str(args.data)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.run.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def train(config: Path, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.out / config.stem / f"seed{seed}"
    spec_path = run_config(config, seed, run_dir, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "WANDB_MODE": "offline"}
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(spec_path)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)  # wait4, not Popen.wait: it also gives this child's peak memory
    if code != 0:
        raise SystemExit(f"{config} seed {seed}: training failed (exit {code}); see {run_dir / 'train.log'}")
    return {"config": config.stem, "seed": seed, "run_dir": run_dir, "seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20}


def learning_curve(run_dir: Path) -> dict[str, np.ndarray]:
    """Per finished epoch (from the CSV log): validation correlation, seconds of that epoch, seconds elapsed."""
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    val = {int(r["epoch"]): float(r["val/correlation"]) for r in rows if r.get("val/correlation")}
    times = {int(r["epoch"]): (float(r["time/epoch_seconds"]), float(r["time/elapsed_seconds"]))
             for r in rows if r.get("time/epoch_seconds")}
    epochs = sorted(set(val) & set(times))
    return {"val": np.array([val[e] for e in epochs]), "epoch_seconds": np.array([times[e][0] for e in epochs]),
            "elapsed": np.array([times[e][1] for e in epochs])}


def collect(runs: list[dict], n_train: int) -> xr.Dataset:
    configs = list(dict.fromkeys(r["config"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    tables = {(r["config"], r["seed"]): xr.open_dataset(r["run_dir"] / "test_metrics.nc").load() for r in runs}
    sessions = list(dict.fromkeys(np.asarray(next(iter(tables.values()))["session"].values).tolist()))
    shape = (len(configs), len(seeds))
    per_session = {name: np.full(shape + (len(sessions),), np.nan) for name in ("correlation", "feve")}
    scalars = {name: np.full(shape, np.nan) for name in ("epochs", "seconds", "seconds_per_epoch", "images_per_second",
                                                         "peak_rss_gb", "best_val_correlation")}
    for r in runs:
        i, j = configs.index(r["config"]), seeds.index(r["seed"])
        table = tables[(r["config"], r["seed"])]
        for name in per_session:
            if name in table:
                by_session = table[name].groupby(table["session"]).mean()
                per_session[name][i, j] = [float(by_session.sel(session=s)) for s in sessions]
        curve = learning_curve(r["run_dir"])
        val, epochs = curve["val"], len(curve["val"])
        scalars["epochs"][i, j] = epochs
        scalars["seconds"][i, j] = r["seconds"]
        scalars["seconds_per_epoch"][i, j] = float(np.median(curve["epoch_seconds"])) if epochs else np.nan
        scalars["images_per_second"][i, j] = n_train / scalars["seconds_per_epoch"][i, j]
        scalars["peak_rss_gb"][i, j] = r["peak_rss_gb"]
        scalars["best_val_correlation"][i, j] = float(np.max(val)) if len(val) else np.nan
    units = {"epochs": "1", "seconds": "s", "seconds_per_epoch": "s", "images_per_second": "1/s", "peak_rss_gb": "GiB",
             "best_val_correlation": "1", "correlation": "1", "feve": "1"}
    data = {name: (("config", "seed", "session"), value) for name, value in per_session.items()}
    data.update({name: (("config", "seed"), value) for name, value in scalars.items()})
    results = xr.Dataset(data, coords={"config": configs, "seed": seeds, "session": sessions})
    for name, unit in units.items():
        results[name].attrs["units"] = unit
    results["correlation"].attrs["long_name"] = "test correlation with the repeat-averaged response, mean over neurons"
    results["feve"].attrs["long_name"] = "fraction of explainable variance explained, mean over neurons"
    results["seconds_per_epoch"].attrs["long_name"] = "median wall-clock seconds per epoch, training and validation"
    results["seconds"].attrs["long_name"] = "wall-clock seconds of the whole process (start-up, training, test)"
    results["images_per_second"].attrs["long_name"] = "training images per wall-clock second (validation included)"
    return results


@torch.no_grad()
def ensemble_correlation(config: Path, run_dirs: list[Path], data: Path) -> dict[str, float]:
    """Per-session mean test correlation of the ensemble (mean rate) of the runs' best checkpoints."""
    from encoders.datasets.datamodule import RecordedDataModule
    from encoders.ensemble import Ensemble
    from encoders.evaluation import session_metrics

    checkpoints = [best_checkpoint(run_dir) for run_dir in run_dirs]
    model = Ensemble.from_checkpoints(checkpoints)
    data_args = {k: v for k, v in yaml.safe_load(config.read_text()).get("data", {}).items() if k != "path"}
    datamodule = RecordedDataModule(str(data), **data_args)
    datamodule.setup("test")
    out = {}
    for session in datamodule.sessions:
        rows = datamodule.tier_data(session, "test")
        rates = torch.cat([model(chunk, session) for chunk in rows["images"].split(256)])
        out[session] = float(np.nanmean(session_metrics({"rates": rates, "responses": rows["responses"].float()})["correlation"].numpy()))
    return out


def best_checkpoint(run_dir: Path) -> Path:
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if len(found) != 1:
        raise SystemExit(f"{run_dir / 'checkpoints'}: expected one best-*.ckpt, found {len(found)}")
    return found[0]


def mean_sd(values: np.ndarray, digits: int = 3) -> str:
    values = values[np.isfinite(values)]
    if not len(values):
        return "–"
    if len(values) == 1:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def tables(results: xr.Dataset, args: argparse.Namespace) -> list[Table]:
    summary = Table(title=f"V4 test accuracy at {args.minutes:g} min per training, {args.threads} thread(s), "
                          f"{args.jobs} job(s) at once (mean ± sd over {results.sizes['seed']} seed(s))")
    for column in ("config", "test corr.", "FEVE", "best val corr.", "epochs", "s/epoch", "train images/s", "peak RSS GiB"):
        summary.add_column(column, justify="left" if column == "config" else "right")
    for config in results["config"].values:
        r = results.sel(config=config)
        summary.add_row(str(config), mean_sd(r["correlation"].mean("session").values), mean_sd(r["feve"].mean("session").values),
                        mean_sd(r["best_val_correlation"].values), mean_sd(r["epochs"].values, digits=0),
                        f"{float(r['seconds_per_epoch'].mean()):.1f}", f"{float(r['images_per_second'].mean()):.0f}",
                        f"{float(r['peak_rss_gb'].max()):.2f}")
    if "ensemble_correlation" in results:
        for config in results["config"].values:
            value = results["ensemble_correlation"].sel(config=config).mean("session")
            summary.add_row(f"{config}: ensemble of the {results.sizes['seed']} seeds", f"{float(value):.3f}",
                            *["" for _ in range(6)])
    sessions = Table(title="test correlation per session (mean over seeds)")
    sessions.add_column("session")
    for config in results["config"].values:
        sessions.add_column(str(config), justify="right")
    for session in results["session"].values:
        sessions.add_row(str(session), *(f"{float(results['correlation'].sel(config=c, session=session).mean()):.3f}"
                                         for c in results["config"].values))
    return [summary, sessions]


def markdown(table: Table) -> str:
    header = [str(c.header) for c in table.columns]
    cells = [[str(cell) for cell in c.cells] for c in table.columns]
    lines = [f"**{table.title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in zip(*cells)]
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = {}
    for r in runs:
        curve = learning_curve(r["run_dir"])
        colour = colours.setdefault(r["config"], f"C{len(colours)}")
        ax.plot(curve["elapsed"] / 60, curve["val"], color=colour, marker=".", alpha=0.8,
                label=r["config"] if r["seed"] == min(x["seed"] for x in runs if x["config"] == r["config"]) else None)
    ax.set_xlabel("wall-clock minutes of training and validation")
    ax.set_ylabel("validation correlation")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title("learning curves, one line per seed")
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = [(config, seed) for seed in range(args.repeat) for config in args.configs]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda job: train(*job, args), jobs))
    import h5py

    with h5py.File(args.data, "r") as file:
        n_train = sum(int(np.sum(group["tier"].asstr()[()] == "train")) for group in file["sessions"].values())
    results = collect(runs, n_train)
    if args.repeat > 1:  # the seeds trained side by side on args.jobs cores form an ensemble within the same budget
        values = [[ensemble_correlation(c, [r["run_dir"] for r in runs if r["config"] == c.stem], args.data)[s]
                   for s in results["session"].values] for c in args.configs]
        results["ensemble_correlation"] = (("config", "session"), np.array(values))
        results["ensemble_correlation"].attrs.update(units="1", long_name="test correlation of the seeds' mean rate")
    results.attrs.update(data=str(args.data), minutes=args.minutes, threads=args.threads, jobs=args.jobs,
                         configs=[str(c) for c in args.configs])
    out = args.out
    write_netcdf(results, out / "results.nc")
    console = Console(width=140)
    rendered = tables(results, args)
    for table in rendered:
        console.print(table)
    write_text("\n".join(markdown(t) for t in rendered), out / "results.md")
    plot_curves(runs, out / "learning_curves.png")
    console.print(f"results: {out / 'results.nc'}, {out / 'results.md'}, {out / 'learning_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
