"""Training on a dataset larger than the memory limit: the DataModule's lazy path at scale.

    flock /tmp/encoders-heavy.lock python benchmarks/lazy_training.py            # ~6 GB of images, limit 1 GB (~15-20 min)
    python benchmarks/lazy_training.py --quick                                    # smoke run, ~2 minutes

1. Writes a dataset of `--gb` GB of uint8 images (one image per HDF5 chunk, as `io.write_dataset`
   stores them) into a temporary folder, streaming: `write_dataset` consumes a generator of
   sessions of `--session-gb` each, and the generator refills one image buffer per session, so
   its peak memory is about one session, whatever `--gb` is. Images are natural-image crops
   (`natural_image_pool`, a pool of 8192 with the 8 flips/rotations and contrast inversion),
   responses Poisson draws of a cheap energy model (a Gabor quadrature pair in a Gaussian
   receptive field per neuron): the point is I/O and memory, not accuracy.
2. Runs `RecordedDataModule.setup()` alone on the whole file, its first read: time and peak memory
   (setup streams pixel statistics over every training image).
3. Trains with the project's real training path (`encoders.training.cli.run(["fit", "--config", ...])`,
   = `python train.py fit`) in a fresh child process per row, for `--steps` optimisation steps, no
   validation: a first slice of the sessions that fits the memory limit, in memory and lazily
   (`data.in_memory` true, false); then the whole file with `in_memory` left to the DataModule
   (it picks lazy: the file is several times the limit) with each `--workers` count, and the
   largest count twice, to check that workers leave training deterministic (same losses, weights).
   Each child reports setup() time and the peak memory right after it, images/s over the steps
   after `--warmup`, the time per step spent waiting for data and computing, and peak RSS (VmHWM
   from /proc of the training process; DataLoader workers are separate processes, reported apart).

The file's pages are dropped from the page cache (posix_fadvise DONTNEED) before each run unless
`--warm-cache`, so lazy reads come from the disk, as they would for a file larger than RAM (the
disk's host may still cache it). Before each run the script waits until other processes use less
than `--quiet` cores; the load average and the CPU other processes used during each run are printed.
Results and the interpretation of a full run: docs/lazy_path.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NEURONS = 40
QUIET = 0.3  # before each child, wait until other processes use less than this many cores (default of --quiet)
POOL = 8192  # natural crops the images are drawn from (x 16 variants)
BLOCK = 4096  # images generated at a time
# A small, fast data-driven core and Gaussian readout (~1000 images/s on 2 cores at 64x64), so that
# data loading is a visible part of a step; the attention readout is ~10x slower at this size.
MODEL = {
    "core": {"type": "stacked", "hidden_channels": 16, "layers": 2, "input_kernel": 5, "hidden_kernel": 3, "gamma_input": 1.0},
    "readout": {"type": "gaussian", "gamma_features": 0.001},
    "lr": 0.005,
}


# ------------------------------------------------------------------------------------- helpers
def proc_status(field: str, pid: int | str = "self") -> float:
    """A memory field of /proc/<pid>/status in MB (VmHWM = peak resident set, VmRSS = now)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def child_pids() -> list[int]:
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def load1() -> float:
    return os.getloadavg()[0]


def cpu_times() -> tuple[float, float]:
    """Seconds of CPU time the whole machine spent busy, and idle waiting for I/O, since boot."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / hz, iowait / hz


def wait_quiet(threshold: float, window: float = 5.0, timeout: float = 1800.0) -> float:
    """Wait until the other processes use less than `threshold` cores over `window` seconds (at most
    `timeout` seconds); returns the cores they used in the last window. Runs between our children, so all
    the CPU it sees is someone else's."""
    start, said = time.perf_counter(), False
    while True:
        before = cpu_times()[0]
        time.sleep(window)
        used = (cpu_times()[0] - before) / window
        if used < threshold or time.perf_counter() - start > timeout:
            return used
        if not said:
            print(f"  waiting: other processes use {used:.2f} cores (> {threshold})", flush=True)
            said = True


def malloc_trim() -> None:
    """Hand memory that glibc holds freed back to the OS (to tell retained-but-free from live memory)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (only this file's, clean pages; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- generation
def _energy_neurons(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A quadrature pair of Gabor filters in a Gaussian receptive field per neuron, (pixels, n) each."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = (rng.uniform(0.3, 0.7, (2, n)) * size).astype(np.float32)
    sigma = rng.uniform(0.08, 0.15, n).astype(np.float32) * size
    theta = rng.uniform(0, np.pi, n).astype(np.float32)
    wavelength = rng.uniform(0.15, 0.35, n).astype(np.float32) * size
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    envelope = np.exp(-(dx**2 + dy**2) / (2 * sigma[:, None, None] ** 2))
    phase = 2 * np.pi * (dx * np.cos(theta)[:, None, None] + dy * np.sin(theta)[:, None, None]) / wavelength[:, None, None]
    even, odd = (envelope * np.cos(phase)).reshape(n, -1), (envelope * np.sin(phase)).reshape(n, -1)
    even /= np.linalg.norm(even, axis=1, keepdims=True)
    odd /= np.linalg.norm(odd, axis=1, keepdims=True)
    return even.T.copy(), odd.T.copy()


def _drive(images: np.ndarray, even: np.ndarray, odd: np.ndarray) -> np.ndarray:
    x = (images.reshape(len(images), -1).astype(np.float32) - 128.0) / 64.0
    return np.sqrt((x @ even) ** 2 + (x @ odd) ** 2)


def _variants(block: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image flipped/rotated one of 8 ways and contrast-inverted with probability 1/2."""
    kind = rng.integers(8, size=len(block))
    for k in range(1, 8):
        chosen = kind == k
        if chosen.any():
            sub = block[chosen]
            if k & 4:
                sub = sub.transpose(0, 2, 1)
            block[chosen] = np.rot90(sub, k & 3, axes=(1, 2))
    invert = rng.random(len(block)) < 0.5
    block[invert] = 255 - block[invert]
    return block


def generate(spec: dict) -> dict:
    """Write the dataset `spec` describes; returns timings and the peak memory of this process."""
    from encoders.datasets.io import write_dataset
    from encoders.datasets.natural_images import natural_image_pool
    from encoders.datasets.schema import SessionData

    start = time.perf_counter()
    size, n, n_sessions = spec["image_size"], spec["images_per_session"], spec["sessions"]
    pool = natural_image_pool(min(POOL, n_sessions * n), size, spec["seed"])
    # One buffer, refilled for every session: write_dataset writes a session completely before it
    # asks for the next one and keeps no reference to it, so memory stays at one session's images.
    buffer = np.empty((n, size, size), np.uint8)
    peak_before_write = proc_status("VmHWM")

    def sessions():
        for s in range(n_sessions):
            rng = np.random.default_rng([spec["seed"], s])
            even, odd = _energy_neurons(rng, NEURONS, size)
            calibration = _drive(pool[: min(len(pool), 2048)], even, odd)
            mu, sd = calibration.mean(0), calibration.std(0) + 1e-6
            responses = np.empty((n, NEURONS), np.float32)
            for i in range(0, n, BLOCK):
                block = _variants(pool[rng.integers(len(pool), size=min(BLOCK, n - i))], rng)
                buffer[i : i + len(block)] = block
                z = (_drive(block, even, odd) - mu) / sd
                rate = 0.3 + 2.0 * np.logaddexp(0.0, 1.5 * z)  # softplus, mean ~2-3 spikes per bin
                responses[i : i + len(block)] = rng.poisson(rate)
            tiers = np.full(n, "train", dtype="<U10")
            order = rng.permutation(n)
            tiers[order[: n // 10]] = "validation"
            tiers[order[n // 10 : n // 5]] = "test"
            yield SessionData(
                session_id=f"s{s:03d}", images=buffer, image_ids=np.arange(n, dtype=np.int64), responses=responses,
                tiers=tiers, neuron_ids=np.asarray([f"s{s:03d}-n{i:02d}" for i in range(NEURONS)]),
                attrs={"units": "spikes per bin (Poisson)", "spike_counts": 1, "animal": "synthetic"},
            )

    write_dataset(spec["path"], sessions(), attrs={"title": "lazy-path benchmark data", "source": "benchmarks/lazy_training.py"})
    return {
        "seconds": time.perf_counter() - start, "peak_rss_mb": proc_status("VmHWM"),
        "peak_before_write_mb": peak_before_write, "session_images_mb": buffer.nbytes / 2**20,
        "file_gb": os.path.getsize(spec["path"]) / 1e9,
    }


# ------------------------------------------------------------------------------------ training
try:
    import pytorch_lightning as pl

    class StepProbe(pl.Callback):
        """Losses of every step, images/s after `warmup` steps, peak memory and a hash of the final weights."""

        def __init__(self, warmup: int = 10):
            self.warmup = warmup
            self.losses: list[float] = []
            self.images = 0
            self.start: float | None = None
            self.end: float | None = None
            self.waits: list[float] = []  # per step: from the end of the last step to this one's start (fetching)
            self.computes: list[float] = []  # per step: its forward, backward and optimizer step
            self.result: dict = {}

        def on_train_start(self, trainer, pl_module) -> None:
            self.rss_train_start = proc_status("VmRSS")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = self.step_start = time.perf_counter()
            if self.start is None and trainer.global_step >= self.warmup:
                self.start = now
            elif self.start is not None:
                # since the last step ended: Lightning fetched the next batch (it keeps one ahead)
                self.waits.append(now - self.end)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))
            if self.start is not None:
                self.images += int(batch["images"].shape[0])
                self.end = time.perf_counter()
                self.computes.append(self.end - self.step_start)

        def on_train_end(self, trainer, pl_module) -> None:
            digest = hashlib.sha256()
            for name, tensor in sorted(pl_module.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            workers = []
            for pid in child_pids():
                try:
                    workers.append(proc_status("VmHWM", pid))
                except OSError:
                    pass
            self.result = {
                "images_per_s": self.images / (self.end - self.start) if self.start and self.end else float("nan"),
                "data_ms_per_step": 1000 * float(np.mean(self.waits)) if self.waits else float("nan"),
                "step_ms_median": 1000 * float(np.median(self.computes)) if self.computes else float("nan"),
                "step_ms_mean": 1000 * float(np.mean(self.computes)) if self.computes else float("nan"),
                "steps": len(self.losses), "losses": self.losses, "weights_sha256": digest.hexdigest(),
                "peak_rss_mb": proc_status("VmHWM"), "worker_peak_rss_mb": workers,
                "rss_train_start_mb": self.rss_train_start, "rss_end_mb": proc_status("VmRSS"),
            }
            malloc_trim()
            self.result["rss_end_trimmed_mb"] = proc_status("VmRSS")
except ImportError:  # the parent process needs none of this
    pass


def train(config: Path) -> dict:
    """`train.py fit --config config` in this process, with setup() timed and memory read around it."""
    os.environ.setdefault("WANDB_MODE", "offline")
    from encoders.datasets.datamodule import RecordedDataModule
    from encoders.training.cli import run

    record: dict = {}
    original = RecordedDataModule.setup

    def timed_setup(self, stage=None):
        if self.tables:
            return original(self, stage)
        record["rss_before_setup_mb"] = proc_status("VmRSS")
        start = time.perf_counter()
        original(self, stage)
        record["setup_s"] = time.perf_counter() - start
        record["setup_peak_rss_mb"] = proc_status("VmHWM")
        record["rss_after_setup_mb"] = proc_status("VmRSS")
        record["path"] = "in memory" if next(iter(self.tables.values())).images is not None else "lazy"
        record["train_images"] = sum(int((t.tiers == "train").sum()) for t in self.tables.values())

    RecordedDataModule.setup = timed_setup
    start = time.perf_counter()
    cli = run(["fit", "--config", str(config)])
    record["wall_s"] = time.perf_counter() - start
    probe = next(c for c in cli.trainer.callbacks if type(c).__name__ == "StepProbe")
    record.update(probe.result)
    return record


def setup_only(spec: dict) -> dict:
    """RecordedDataModule(...).setup() alone: its time and the peak memory of the process."""
    from encoders.datasets.datamodule import RecordedDataModule

    before = proc_status("VmRSS")
    start = time.perf_counter()
    dm = RecordedDataModule(**spec)
    dm.setup("fit")
    seconds = time.perf_counter() - start
    result = {"setup_s": seconds, "rss_before_setup_mb": before, "setup_peak_rss_mb": proc_status("VmHWM"),
              "rss_after_setup_mb": proc_status("VmRSS"),
              "path": "in memory" if next(iter(dm.tables.values())).images is not None else "lazy",
              "train_images": sum(int((t.tiers == "train").sum()) for t in dm.tables.values())}
    malloc_trim()
    result["rss_after_setup_trimmed_mb"] = proc_status("VmRSS")
    return result


def write_config(folder: Path, name: str, data: dict, steps: int, warmup: int) -> Path:
    import yaml

    config = {
        "seed_everything": 0,
        "test_after_fit": False,
        "trainer": {
            "default_root_dir": str(folder / "runs" / name), "accelerator": "cpu", "devices": 1,
            "max_steps": steps, "limit_val_batches": 0, "num_sanity_val_steps": 0, "deterministic": True,
            "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [{"class_path": "lazy_training.StepProbe", "init_args": {"warmup": warmup}}],
        },
        "model": MODEL,
        "data": {"batch_size": 64, "seed": 0, **data},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -------------------------------------------------------------------------------------- driver
def run_child(kind: str, argument: str, folder: Path, name: str, quiet: float = QUIET) -> dict:
    """Run this script as a fresh child (`--child kind argument out`); its result and the load during it."""
    out, log = folder / f"{name}.json", folder / f"{name}.log"
    quiet = wait_quiet(quiet) if quiet > 0 else float("nan")
    loads = [load1()]
    cpu0, start = cpu_times(), time.perf_counter()
    with open(log, "w") as stream:
        child = subprocess.Popen([sys.executable, __file__, "--child", kind, argument, str(out)], stdout=stream,
                                 stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # its usage includes its reaped DataLoader workers
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(2)
            loads.append(load1())
    wall, cpu1 = time.perf_counter() - start, cpu_times()
    if child.returncode != 0 or not out.is_file():
        tail = log.read_text()[-4000:]
        raise SystemExit(f"lazy_training: child {name} failed with status {child.returncode}; its log ends:\n{tail}")
    result = json.loads(out.read_text())
    result["load_mean"], result["load_max"] = float(np.mean(loads)), float(np.max(loads))
    busy, iowait = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    result["child_cores"] = (usage.ru_utime + usage.ru_stime) / wall
    result["child_user_s"], result["child_sys_s"] = usage.ru_utime, usage.ru_stime
    result["others_cores"] = max(0.0, busy / wall - result["child_cores"])  # CPU used by every other process
    result["iowait_cores"] = iowait / wall
    result["others_cores_before"] = quiet
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.1 GB, limit 0.1 GB, 30 steps (~1-2 minutes)")
    parser.add_argument("--gb", type=float, help="GB of uint8 images in the big file (default 6)")
    parser.add_argument("--session-gb", type=float, help="GB of images per session (default 0.25; generator peak ~ one session)")
    parser.add_argument("--slice-gb", type=float, help="GB of images in the slice that fits (default: one session)")
    parser.add_argument("--memory-limit-gb", type=float, help="data.memory_limit_gb (default 1)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square grayscale images (default 64)")
    parser.add_argument("--steps", type=int, help="optimisation steps per run (default 300)")
    parser.add_argument("--warmup", type=int, help="steps left out of images/s (default 20)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="data.num_workers on the big file")
    parser.add_argument("--warm-cache", action="store_true", help="keep the file in the page cache between runs")
    parser.add_argument("--dir", help="where to write the data (default: a new temporary folder, deleted at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the folder")
    parser.add_argument("--json", help="also write every result to this JSON file")
    parser.add_argument("--quiet", type=float, default=QUIET,
                        help="before each run, wait until other processes use fewer cores than this (0: do not wait)")
    parser.add_argument("--malloc-mmap-threshold", type=int, metavar="BYTES",
                        help="set MALLOC_MMAP_THRESHOLD_ for the training runs (glibc; e.g. 33554432: see docs/lazy_path.md)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, argument, out = args.child
        if kind == "generate":
            result = generate(json.loads(argument))
        elif kind == "setup":
            result = setup_only(json.loads(argument))
        else:
            result = train(Path(argument))
        Path(out).write_text(json.dumps(result))
        return

    defaults = dict(gb=0.1, session_gb=0.025, memory_limit_gb=0.1, steps=30, warmup=5) if args.quick else \
        dict(gb=6.0, session_gb=0.25, memory_limit_gb=1.0, steps=300, warmup=20)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.malloc_mmap_threshold is not None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)  # inherited by the children
    image_bytes = args.image_size**2
    images_per_session = int(args.session_gb * 1e9 // image_bytes)
    n_sessions = max(1, round(args.gb / args.session_gb))
    n_slice = max(1, min(n_sessions, round((args.slice_gb or args.session_gb) / args.session_gb)))
    session_gb = images_per_session * image_bytes / 1e9
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)", flush=True)

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lazy_training_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big.h5"
    results: dict = {"args": vars(args), "load_start": os.getloadavg()}
    try:
        spec = {"path": str(path), "image_size": args.image_size, "images_per_session": images_per_session,
                "sessions": n_sessions, "seed": 0}
        print(f"writing {n_sessions} sessions x {images_per_session} images of {args.image_size}x{args.image_size} "
              f"({n_sessions * session_gb:.2f} GB of images) to {path}", flush=True)
        results["generate"] = gen = run_child("generate", json.dumps(spec), folder, "generate", args.quiet)
        print(f"  {gen['seconds']:.0f} s, file {gen['file_gb']:.2f} GB, generator peak RSS {gen['peak_rss_mb']:.0f} MB "
              f"(one session's images: {gen['session_images_mb']:.0f} MB)", flush=True)

        # the first read of the whole file: setup() alone (streams pixel statistics over every training image)
        evict(path)
        print("setup() alone on the whole file (its first read) ...", flush=True)
        results["setup"] = setup = run_child("setup", json.dumps({"path": str(path), "memory_limit_gb": args.memory_limit_gb}),
                                             folder, "setup", args.quiet)
        print(f"  {setup['path']}: {setup['setup_s']:.1f} s, peak RSS {setup['setup_peak_rss_mb']:.0f} MB "
              f"(before {setup['rss_before_setup_mb']:.0f} MB; iowait {setup['iowait_cores']:.2f} cores)", flush=True)

        sessions = [f"s{s:03d}" for s in range(n_sessions)]
        common = {"path": str(path), "memory_limit_gb": args.memory_limit_gb}
        plan = [("slice, in_memory: true", n_slice, {"sessions": sessions[:n_slice], "in_memory": True}, 0),
                ("slice, in_memory: false", n_slice, {"sessions": sessions[:n_slice], "in_memory": False}, 0)]
        plan += [(f"all, auto, {w} workers", n_sessions, {}, w) for w in args.workers]
        plan += [(f"all, auto, {max(args.workers)} workers (repeat)", n_sessions, {}, max(args.workers))]
        rows = []
        for i, (label, n, data, workers) in enumerate(plan):
            config = write_config(folder, f"run{i}", {**common, **data, "num_workers": workers}, args.steps, args.warmup)
            if not args.warm_cache:
                evict(path)
            print(f"training: {label} ({n * session_gb:.2f} GB) ...", flush=True)
            row = run_child("train", str(config), folder, f"run{i}", args.quiet)
            row.update(label=label, gb=n * session_gb, model_gb=n * images_per_session * image_bytes * 4 / 1e9, workers=workers)
            print(f"  {row['path']}: {row['images_per_s']:.0f} images/s (data wait {row['data_ms_per_step']:.1f} ms, compute "
                  f"{row['step_ms_median']:.0f} ms per step), peak RSS {row['peak_rss_mb']:.0f} MB, setup {row['setup_s']:.1f} s; "
                  f"CPU user {row['child_user_s']:.0f} s, sys {row['child_sys_s']:.0f} s (load {row['load_mean']:.2f}, "
                  f"other processes {row['others_cores']:.2f} cores)", flush=True)
            rows.append(row)
        results["runs"] = rows
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    results["load_end"] = os.getloadavg()
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def report(results: dict, args) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = results["runs"]
    big_gb = max(r["gb"] for r in rows)
    console = Console(width=260)
    table = Table(box=box.MARKDOWN, title=f"lazy path: {args.steps} steps of batch 64, images/s after {args.warmup} "
                  f"steps, {args.image_size}x{args.image_size} uint8 images, {'warm' if args.warm_cache else 'cold'} page cache")
    columns = ("run", "path", "dataset GB", "float32 in memory GB", "memory limit GB", "workers", "images/s",
               "data wait ms/step", "compute ms/step, mean (median)", "peak RSS MB", "workers' peak RSS MB", "setup s", "RSS before / peak after setup MB",
               "load (1 min) / others' CPU cores")
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "path") else "right", no_wrap=column == "run")
    setup = results["setup"]
    table.add_row("all, setup() alone, first read", setup["path"], f"{big_gb:.2f}", f"{big_gb * 4:.2f}",
                  f"{args.memory_limit_gb:g}", "-", "-", "-", "-", "-", "-", f"{setup['setup_s']:.1f}",
                  f"{setup['rss_before_setup_mb']:.0f} / {setup['setup_peak_rss_mb']:.0f}",
                  f"{setup['load_mean']:.2f} / {setup['others_cores']:.2f}")
    for r in rows:
        workers = " + ".join(f"{x:.0f}" for x in r["worker_peak_rss_mb"]) or "-"
        table.add_row(r["label"], r["path"], f"{r['gb']:.2f}", f"{r['model_gb']:.2f}", f"{args.memory_limit_gb:g}",
                      str(r["workers"]), f"{r['images_per_s']:.0f}", f"{r['data_ms_per_step']:.1f}",
                      f"{r['step_ms_mean']:.0f} ({r['step_ms_median']:.0f})", f"{r['peak_rss_mb']:.0f}", workers,
                      f"{r['setup_s']:.1f}", f"{r['rss_before_setup_mb']:.0f} / {r['setup_peak_rss_mb']:.0f}",
                      f"{r['load_mean']:.2f} / {r['others_cores']:.2f}")
    console.print(table)
    memory = Table(box=box.MARKDOWN, title="memory of the training process (MB): RSS at points of the run; "
                   "'trimmed' = after malloc_trim(0), i.e. without memory glibc holds freed")
    for column in ("run", "before setup", "peak in setup", "after setup", "train start", "end", "end, trimmed", "peak"):
        memory.add_column(column, justify="left" if column == "run" else "right", no_wrap=column == "run")
    memory.add_row("all, setup() alone", f"{setup['rss_before_setup_mb']:.0f}", f"{setup['setup_peak_rss_mb']:.0f}",
                   f"{setup['rss_after_setup_mb']:.0f}", "-", f"{setup['rss_after_setup_mb']:.0f}",
                   f"{setup['rss_after_setup_trimmed_mb']:.0f}", f"{setup['setup_peak_rss_mb']:.0f}")
    for r in rows:
        memory.add_row(r["label"], *(f"{r[k]:.0f}" for k in ("rss_before_setup_mb", "setup_peak_rss_mb", "rss_after_setup_mb",
                                                             "rss_train_start_mb", "rss_end_mb", "rss_end_trimmed_mb", "peak_rss_mb")))
    console.print(memory)
    gen = results["generate"]
    console.print(f"generation: {gen['file_gb']:.2f} GB file in {gen['seconds']:.0f} s; generator peak RSS "
                  f"{gen['peak_rss_mb']:.0f} MB ({gen['peak_before_write_mb']:.0f} MB before writing; one session's "
                  f"images {gen['session_images_mb']:.0f} MB)")
    big = [r for r in rows if r["label"].startswith("all")]
    first, *others = big
    same_losses = [r["label"] for r in others if r["losses"] == first["losses"]]
    same_weights = [r["label"] for r in others if r["weights_sha256"] == first["weights_sha256"]]
    console.print(f"determinism: against '{first['label']}', identical losses: {same_losses or 'none'}; "
                  f"identical weights: {same_weights or 'none'}")
    slices = [r for r in rows if r["label"].startswith("slice")]
    if slices and big:
        grow = big[0]["setup_peak_rss_mb"] - slices[-1]["setup_peak_rss_mb"]
        console.print(f"lazy setup peak, all vs slice: {big[0]['setup_peak_rss_mb']:.0f} vs {slices[-1]['setup_peak_rss_mb']:.0f} MB "
                      f"(+{grow:.0f} MB for {big[0]['gb'] / slices[-1]['gb']:.0f}x the images; responses held in memory: "
                      f"{big[0]['train_images'] / 0.8 * NEURONS * 4 / 2**20:.0f} MB as float32)")
    console.print(f"setup() of the whole file, first read after writing it: {setup['setup_s']:.1f} s "
                  f"({big_gb / setup['setup_s'] * 1000:.0f} MB/s of images; CPUs waiting for I/O: {setup['iowait_cores']:.2f} "
                  f"cores on average; the setup() of the later runs reads it again, page cache dropped but the disk's host may cache it)")
    start, end = results["load_start"], results["load_end"]
    console.print(f"load average (1, 5, 15 min): start {start[0]:.2f} {start[1]:.2f} {start[2]:.2f}, "
                  f"end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}; {os.cpu_count()} CPUs, torch threads: default; "
                  f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")


if __name__ == "__main__":
    main()
