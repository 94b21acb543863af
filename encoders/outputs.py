"""Writing files atomically: every file the project writes goes through `atomic_write`.

A temporary file next to the target is written and renamed into place only when complete, so a
process killed while writing (or Ctrl-C) leaves only a hidden temporary (`.NAME.tmp-PID`), never a
half-written file; the next successful write of the same file removes such leftovers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import xarray as xr


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` with a temporary path beside `path`, then rename it into place; returns `path`."""
    path = Path(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # folders this write creates
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.stem}.tmp-"
    tmp = path.with_name(f"{prefix}{os.getpid()}{path.suffix}")  # the suffix keeps writers that look at it happy
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        for folder in made:  # innermost first: a failed write leaves no empty folders behind either
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            from encoders.errors import EncodersError

            raise EncodersError(f"{path}: not written, no space left on its device (nothing was left half-written)") from None
        raise
    _remove_stale_temporaries(path, prefix)
    return path


def check_writable(folder: str | Path) -> Path:
    """The output folder exists or can be made, and takes files; EncodersError naming it otherwise.

    Called by every command before its first compute, so a read-only folder, a file in the way or
    a filesystem that refuses files fails in one line, not after minutes of work.
    """
    from encoders.errors import EncodersError

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # nothing is created here: a later check may still refuse the run
    if not existing.is_dir():
        raise EncodersError(f"{folder}: output folder cannot be made: {existing} exists and is not a folder")
    probe, before = existing / f".write-probe-{os.getpid()}", existing.stat()
    try:
        probe.write_bytes(b"0")
        probe.unlink()
        os.utime(existing, ns=(before.st_atime_ns, before.st_mtime_ns))  # the probe leaves no trace, not even a new mtime
    except OSError as error:
        probe.unlink(missing_ok=True)
        raise EncodersError(f"{folder}: output folder cannot be written ({error.strerror or type(error).__name__} "
                            f"in {existing})") from None
    return folder


def ensure_space(path: str | Path, nbytes: int) -> None:
    """EncodersError naming `path` unless its folder's filesystem has room for `nbytes` (plus 5% and 64 kB).

    HDF5 (through h5py) can crash the whole process when a write fails for lack of space, instead
    of raising; writers of large HDF5 files check before they start.
    """
    from encoders.errors import EncodersError

    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    need = int(nbytes * 1.05) + 64 * 1024
    if free < need:
        raise EncodersError(f"{path}: needs about {need / 2**20:.1f} MB, its device has {free / 2**20:.1f} MB free")


def write_netcdf(data: xr.Dataset | xr.DataArray, path: str | Path) -> Path:
    """Write a labelled dataset to NetCDF (h5netcdf) atomically, after checking there is room (see ensure_space)."""
    ensure_space(path, data.nbytes + 64 * 1024)
    return atomic_write(path, lambda tmp: data.to_netcdf(tmp, engine="h5netcdf"))


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(data: object, path: str | Path) -> Path:
    return write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", path)


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(figure)


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
