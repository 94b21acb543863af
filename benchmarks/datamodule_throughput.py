"""Batches/s and peak memory of the DataModule's in-memory and lazy paths on a dataset file.

    python benchmarks/datamodule_throughput.py data/cowley2023_v4.h5 --resize 40 40 --batch-size 64
"""

from __future__ import annotations

import argparse
import resource
import time

from rich.console import Console
from rich.table import Table

from encoders.datasets.datamodule import RecordedDataModule


def measure(path: str, in_memory: bool, batch_size: int, resize: tuple[int, int] | None, epochs: int) -> dict:
    start = time.perf_counter()
    dm = RecordedDataModule(path, batch_size=batch_size, resize=resize, in_memory=in_memory)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    batches = images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            batches += 1
            images += batch["images"].shape[0]
    elapsed = time.perf_counter() - start
    return {"path": "in-memory" if in_memory else "lazy (h5py)", "setup_s": setup_s, "batches_per_s": batches / elapsed,
            "images_per_s": images / elapsed, "epoch_s": elapsed / epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resize", type=int, nargs=2, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"DataModule throughput: {args.path}, batch {args.batch_size}, resize {args.resize}")
    for column in ("path", "setup s", "batches/s", "images/s", "s/epoch", "peak RSS GB (cumulative)"):
        table.add_column(column, justify="right")
    for in_memory in (True, False):
        row = measure(args.path, in_memory, args.batch_size, tuple(args.resize) if args.resize else None, args.epochs)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        table.add_row(row["path"], f"{row['setup_s']:.1f}", f"{row['batches_per_s']:.0f}", f"{row['images_per_s']:.0f}",
                      f"{row['epoch_s']:.2f}", f"{peak:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
