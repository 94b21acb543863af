"""Training images/s and peak memory for each architecture on a dataset (default: the Cowley V4 file).

    python benchmarks/train_throughput.py --data data/cowley2023_v4.h5 --steps 30

Each architecture is a (name, config) pair read from experiments/*.yaml, so the numbers describe
the configs people actually run. Times a warm loop of real training steps (forward, Poisson loss,
backward, AdamW) on batches from the DataModule, cycling through sessions.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import time

import torch
import yaml
from rich.console import Console
from rich.table import Table

from encoders.datasets.datamodule import RecordedDataModule
from encoders.metrics import poisson_loss
from encoders.training import EncodingModel

CONFIGS = ["experiments/cowley_attention.yaml", "experiments/cowley_gaussian.yaml"]


def bench(config_path: str, data: str, steps: int, channels_last: bool | None) -> dict:
    config = yaml.safe_load(open(config_path))
    data_args = {k: v for k, v in config["data"].items() if k != "path"}
    dm = RecordedDataModule(data, **data_args)
    dm.setup("fit")
    model_args = dict(config["model"])
    if channels_last is not None:
        model_args["channels_last"] = channels_last
    model = EncodingModel(**model_args, data_info={"sessions": dm.session_info(), "input_shape": list(dm.input_shape()),
                                                    "transform": dm.transform.state()})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = itertools.cycle(list(dm.train_dataloader()))
    images = 0
    for i in range(steps + 5):
        if i == 5:  # warm-up steps excluded
            start, images = time.perf_counter(), 0
        batch = next(batches)
        rates = model(batch["images"], batch["session"])
        loss = poisson_loss(rates, batch["responses"]) + model.encoder.regularizer(batch["session"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += rates.shape[0]
    elapsed = time.perf_counter() - start
    return {"images_per_s": images / elapsed, "epoch_s": sum(len(v) for v in [dm.tier_data(s, "train")["responses"] for s in dm.sessions]) / (images / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/cowley2023_v4.h5")
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compare-layout", action="store_true", help="also time channels-first layout")
    args = parser.parse_args()
    table = Table(title=f"training throughput on {args.data} ({torch.get_num_threads()} threads)")
    for column in ("config", "layout", "images/s", "s/epoch (train tier)", "peak RSS GB (cumulative)"):
        table.add_column(column, justify="right")
    for config in args.configs:
        for layout in ([True, False] if args.compare_layout else [None]):
            row = bench(config, args.data, args.steps, layout)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            name = {None: "config", True: "channels_last", False: "channels_first"}[layout]
            table.add_row(config, name, f"{row['images_per_s']:.0f}", f"{row['epoch_s']:.0f}", f"{peak:.2f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
