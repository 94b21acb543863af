"""Whether two runs wrote the same numbers: every NetCDF file under one folder against the file of the same
relative path under the other, variable by variable (max |difference|, NaNs in the same places).

    python benchmarks/same_numbers.py runs/quickstart_before runs/quickstart

How a refactor shows it changed nothing: run the same config on the code before and after (e.g. a git
worktree of the earlier commit), then compare the run folders (test_metrics.nc and every product).
Prints one line per file ("identical", or what differs); exits 1 when anything differs or is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr


def differences(first: xr.Dataset, second: xr.Dataset) -> list[str]:
    """What differs between two datasets' variables (empty: identical values)."""
    found = []
    for name in sorted(set(first.data_vars) | set(second.data_vars)):
        if name not in first or name not in second:
            found.append(f"{name}: only in one")
            continue
        a, b = first[name].values, second[name].values
        if a.shape != b.shape:
            found.append(f"{name}: shape {a.shape} vs {b.shape}")
        elif a.dtype.kind in "fc":
            same_nans = np.array_equal(np.isnan(a), np.isnan(b))
            worst = float(np.nanmax(np.abs(a - b))) if a.size and not np.isnan(a).all() else 0.0
            if worst != 0.0 or not same_nans:
                found.append(f"{name}: max |difference| {worst:.3g}" + ("" if same_nans else ", NaNs differ"))
        elif not np.array_equal(a, b):
            found.append(f"{name}: differs")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    files = sorted(args.before.rglob("*.nc"))
    if not files:
        print(f"{args.before}: no NetCDF files", file=sys.stderr)
        return 2
    same = True
    for path in files:
        relative = path.relative_to(args.before)
        other = args.after / relative
        if not other.is_file():
            print(f"{relative}: missing in {args.after}")
            same = False
            continue
        with xr.open_dataset(path, engine="h5netcdf") as a, xr.open_dataset(other, engine="h5netcdf") as b:
            found = differences(a.load(), b.load())
        same &= not found
        print(f"{relative}: {'identical' if not found else '; '.join(found)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
