"""Time and peak memory of `encoders prepare nwb` on a Cowley-sized NWB file (seeded, made in a temp folder).

The file: 1,200 RGB images of 112x112 as `Images` in stimulus_template, each shown 10 times in random
order (12,000 presentations, 0.1 s on, 0.1 s off) through an IndexSeries, and 60 units with Poisson
spike trains (5-40 Hz). A second run takes the same presentations from a trials column
(`stimulus_id`, onsets in `start_time`) with the images in a .npy file, so the two rows separate
reading 1,200 `Image` objects through pynwb from counting the spikes. Each import runs in a fresh
process (this script with --child, calling `encoders.cli.main`); its peak RSS is that process's own (Linux).

    python benchmarks/nwb_import_speed.py [--images 1200] [--repeats 10] [--units 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout


def make_files(folder: Path, n_images: int, repeats: int, n_units: int) -> tuple[Path, Path, Path]:
    """(NWB with images in the file, NWB with a stimulus_id trials column, .npy of the images)."""
    import pynwb
    from pynwb.base import ImageReferences, Images
    from pynwb.image import IndexSeries, RGBImage

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n_images, 112, 112, 3), dtype=np.uint8)
    shown = np.concatenate([rng.permutation(n_images) for _ in range(repeats)])
    onsets = np.arange(len(shown)) * 0.2 + 1.0
    end = onsets[-1] + 1.0
    spikes = [np.sort(rng.uniform(0, end, rng.poisson(rate * end))) for rate in rng.uniform(5, 40, n_units)]

    def nwbfile(name: str):
        f = pynwb.NWBFile(session_description="benchmark", identifier=name, session_start_time=datetime.datetime(
            2024, 1, 1, tzinfo=datetime.timezone.utc))
        for times in spikes:
            f.add_unit(spike_times=times)
        return f

    with_images = nwbfile("images")
    pictures = [RGBImage(name=f"image{i:04d}", data=p, description="stimulus") for i, p in enumerate(pixels)]
    images = Images(name="stimuli", images=pictures, description="stimuli",
                    order_of_images=ImageReferences(name="order_of_images", data=pictures))
    with_images.add_stimulus_template(images)
    with_images.add_stimulus(IndexSeries(name="presentations", data=shown.astype(np.uint32), indexed_images=images,
                                         timestamps=onsets, unit="N/A"))
    trials = nwbfile("trials")
    trials.add_trial_column(name="stimulus_id", description="index into the image array")
    for onset, image in zip(onsets, shown):
        trials.add_trial(start_time=onset, stop_time=onset + 0.1, stimulus_id=int(image))
    paths = folder / "images_in_file.nwb", folder / "trials_column.nwb", folder / "images.npy"
    for path, f in zip(paths, (with_images, trials)):
        with pynwb.NWBHDF5IO(str(path), "w") as io:
            io.write(f)
    np.save(paths[2], pixels)
    return paths


def child(argv: list[str]) -> None:
    """Run one import in this process; print its seconds and peak RSS as JSON."""
    import contextlib
    import io

    from encoders.cli import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"status": status, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))


def run(argv: list[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(done.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start
    return result


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--units", type=int, default=60)
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        in_file, trials, array = make_files(folder, args.images, args.repeats, args.units)
        made = time.perf_counter() - start
        common = ["--latency", "0.05", "--duration", "0.1", "--split.repeats_to_test", "false"]  # every image repeats
        rows = [
            ("Images + IndexSeries", in_file, run(["prepare", "nwb", str(in_file), str(folder / "a.h5"), *common])),
            ("trials column + .npy", trials, run(["prepare", "nwb", str(trials), str(folder / "b.h5"), *common,
                                                  "--stimulus_column", "stimulus_id", "--images.array", str(array)])),
        ]
        print(f"{args.images} images 112x112x3 x {args.repeats} repeats, {args.units} units; files made in {made:.1f} s")
        print("| layout | NWB file MB | import s (in process) | wall s (with interpreter start) | peak RSS MB |")
        print("|---|---|---|---|---|")
        for name, path, r in rows:
            size = path.stat().st_size / 2**20
            print(f"| {name} | {size:.0f} | {r['seconds']:.2f} | {r['wall']:.2f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
