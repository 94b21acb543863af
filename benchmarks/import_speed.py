"""Time and peak memory of importing a dataset, one importer per fresh process.

Each import runs as its own `encoders prepare ...` process (start-up included, as a user runs it);
wall time is measured around it and peak RSS is the child's own maximum resident set (os.wait4),
so the imports do not see each other's memory. Prints a table with the machine's load average.

    python benchmarks/import_speed.py [--source ../shared/datasets/cowley2023_v4] [--repeat 1]
    python benchmarks/import_speed.py --nwb 'data/session.nwb --images stimuli/'   # adds `prepare nwb`

`--nwb` takes the arguments of `encoders prepare nwb` before the output file (the hook for NWB files:
any command line of that importer can be timed beside the others).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = [sys.executable, "-m", "encoders.cli"]


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of one child process; raises if it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed: {child.stderr.read().decode().strip()}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def commands(source: str, nwb: str | None, out: Path) -> dict[str, tuple[list[str], Path]]:
    """name -> (command line, the file it writes)."""
    runs = {
        "prepare cowley2023": [*ENCODERS, "prepare", "cowley2023", source, str(out / "cowley2023.h5")],
        "prepare table (experiments/import_cowley2023.yaml)": [
            *ENCODERS, "prepare", "table", "experiments/import_cowley2023.yaml", str(out / "table.h5"), "--root", source],
    }
    if nwb:  # hook: NWB files through `prepare nwb` (its first argument is the NWB path, the output file comes next)
        nwb_args = shlex.split(nwb)
        runs["prepare nwb"] = [*ENCODERS, "prepare", "nwb", nwb_args[0], str(out / "nwb.h5"), *nwb_args[1:]]
    return {name: (command, next(Path(a) for a in command if a.endswith(".h5"))) for name, command in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "datasets" / "cowley2023_v4"),
                        help="the Cowley et al. 2023 release folder")
    parser.add_argument("--nwb", default=None, help="arguments of `encoders prepare nwb` (NWB path first, then flags)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each import (the table shows each)")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (command, written) in commands(str(Path(args.source).resolve()), args.nwb, Path(folder)).items():
            for _ in range(args.repeat):
                wall, rss = timed(command)
                rows.append((name, wall, rss, written.stat().st_size / 2**20))
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f"; {os.cpu_count()} CPUs")
    print(f"| {'import':<52} | wall s | peak RSS GiB | file MiB |")
    print(f"|{'-' * 54}|--------|--------------|----------|")
    for name, wall, rss, size in rows:
        print(f"| {name:<52} | {wall:6.1f} | {rss:12.2f} | {size:8.0f} |")


if __name__ == "__main__":
    main()
