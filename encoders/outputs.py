"""Writing products: labelled NetCDF and PNG files, atomically (temporary file, then rename).

A process killed while writing leaves only a hidden temporary (`.NAME.tmp-PID`), never a
half-written product; the next successful write of the same product removes such leftovers.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr


def write_netcdf(data: xr.Dataset | xr.DataArray, path: str | Path) -> Path:
    """Write `data` to `path` via a temporary file, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        data.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path, f".{path.name}.tmp-")
    return path


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    _remove_stale_temporaries(path, f".{path.stem}.tmp-")
    return path


def _remove_stale_temporaries(path: Path, prefix: str) -> None:
    """Delete temporaries of `path` left by processes that died mid-write (not ones still writing)."""
    for leftover in path.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix):].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
