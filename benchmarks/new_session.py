"""A new session on a trained core, on Cowley V4: readout-only on a core that never saw the session vs the
model trained on every session, each held-out session in turn.

    python benchmarks/new_session.py --sessions 210325 210305 190925 --minutes 14 --jobs 2

For each held-out session s: a core is trained on the other 8 sessions (experiments/cowley_attention.yaml,
`data.sessions` = the 8, the same `--minutes` budget as the reference), then
experiments/cowley_new_session.yaml fits s's readout on it (readout only, at most its 2-minute budget).
The reference is the same config trained on all 9 sessions for the same budget. Prints per session: test
correlation of the readout-only model and of the all-sessions model on s, their ratio, and the readout fit's
wall time (process start to end, imports included). Runs through `train.py fit`, as a user would.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xarray as xr
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import v4_accuracy  # noqa: E402  (run_config / train: the shipped YAML with only folder, seed, budget and data changed)

from encoders.datasets.io import list_sessions  # noqa: E402
from encoders.outputs import write_text  # noqa: E402


def with_sessions(config: Path, sessions: list[str], path: Path, **model: object) -> Path:
    """`config` with `data.sessions` (and model keys) set, written to `path` (whose stem names the run folder)."""
    spec = yaml.safe_load(config.read_text())
    spec.setdefault("data", {})["sessions"] = sessions
    spec.setdefault("model", {}).update(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def session_correlation(run_dir: Path, session: str) -> float:
    with xr.open_dataset(run_dir / "test_metrics.nc", engine="h5netcdf") as table:
        return float(table["correlation"].where(table["session"] == session, drop=True).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", nargs="+", default=["210325", "210305", "190925"], help="held-out sessions")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "cowley2023_v4.h5")
    parser.add_argument("--core-config", type=Path, default=ROOT / "experiments" / "cowley_attention.yaml")
    parser.add_argument("--readout-config", type=Path, default=ROOT / "experiments" / "cowley_new_session.yaml")
    parser.add_argument("--minutes", type=float, default=14.0, help="budget of every core (and of the reference)")
    parser.add_argument("--readout-minutes", type=float, default=2.0, help="budget of each readout fit")
    parser.add_argument("--jobs", type=int, default=2, help="core trainings at once (1 thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "new_session")
    args = parser.parse_args(argv)
    every = list_sessions(args.data)
    unknown = [s for s in args.sessions if s not in every]
    if unknown:
        parser.exit(2, f"--sessions: {unknown} not in {args.data} ({every})\n")
    options = argparse.Namespace(minutes=args.minutes, threads=1, max_epochs=None, data=args.data, out=args.out)

    def core(name: str, sessions: list[str]) -> Path:
        run_dir = args.out / name / "seed0"
        if not (run_dir / "test_metrics.nc").is_file():  # reruns reuse finished cores
            v4_accuracy.train(with_sessions(args.core_config, sessions, args.out / "configs" / f"{name}.yaml"), 0, options)
        return run_dir

    jobs = [("all_sessions", every)] + [(f"without_{s}", [x for x in every if x != s]) for s in args.sessions]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip([name for name, _ in jobs], pool.map(lambda job: core(*job), jobs)))

    rows = []
    for s in args.sessions:
        base = runs[f"without_{s}"] / "checkpoints" / "last.ckpt"
        run_dir = args.out / f"readout_{s}" / "seed0"
        config = with_sessions(args.readout_config, [s], args.out / "configs" / f"readout_{s}.yaml", init_from=str(base))
        start = time.perf_counter()
        result = v4_accuracy.train(config, 0, argparse.Namespace(**{**vars(options), "minutes": args.readout_minutes}))
        seconds = time.perf_counter() - start
        new, reference = session_correlation(run_dir, s), session_correlation(runs["all_sessions"], s)
        rows.append((s, new, reference, new / reference, seconds, result["peak_rss_gb"]))

    table = Table(title=f"new session on a trained core (Cowley V4; cores {args.minutes:g} min, 1 thread, {args.jobs} at once)")
    for column in ("session", "readout-only r", "all-sessions r", "ratio", "readout fit s (wall)", "peak RSS GB"):
        table.add_column(column, justify="right")
    for s, new, reference, ratio, seconds, rss in rows:
        table.add_row(s, f"{new:.3f}", f"{reference:.3f}", f"{ratio:.2f}", f"{seconds:.0f}", f"{rss:.2f}")
    Console().print(table)
    lines = ["| session | readout-only r | all-sessions r | ratio | readout fit s |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {n:.3f} | {r:.3f} | {q:.2f} | {t:.0f} |" for s, n, r, q, t, _ in rows]
    write_text("\n".join(lines) + "\n", args.out / "results.md")


if __name__ == "__main__":
    main()
