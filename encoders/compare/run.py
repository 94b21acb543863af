"""`encoders compare EXPERIMENT.yaml`: train the grid, make and score MEIs, measure similarity, write the report.

Each stage writes its outputs atomically and skips what exists for the same inputs, so a killed
comparison run again continues where it stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from encoders.compare.accuracy import accuracy_table, agreed_top_k
from encoders.compare.config import CompareConfig
from encoders.compare.generalisation import load_scorers, run_generalisation
from encoders.compare.reconstructions import run_reconstructions
from encoders.compare.grid import available_architectures, train_grid, unavailable
from encoders.compare.report import write_report
from encoders.compare.similarity import model_similarity
from encoders.datasets.datamodule import RecordedDataModule
from encoders.datasets.io import list_sessions
from encoders.devices import usable_device
from encoders.outputs import check_writable, write_netcdf
from encoders.training.cli import check_devices


def run_compare(config: CompareConfig) -> Path:
    """The whole comparison; returns the report's path."""
    os.environ.setdefault("WANDB_MODE", "offline")  # nothing may reach the network unasked
    if config.threads is not None:
        # on a shared CPU machine, threads that wait for a busy core stall each other: 1 thread
        # trained 2.5-4x faster than 2 on 2 cores shared with other jobs
        torch.set_num_threads(config.threads)
    # what this machine must offer, checked before the first file is written or model trains
    usable_device(config.device, f"{config.source}: device")
    check_devices(config.trainer)
    list_sessions(config.data["path"])  # the data file exists and is valid (one line naming it otherwise)
    check_writable(config.out)
    check_writable(config.models)
    architectures = available_architectures(config)
    skipped = {name: unavailable(a) for name, a in config.architectures.items() if name not in architectures}
    config.out.mkdir(parents=True, exist_ok=True)
    trained = train_grid(config, architectures)

    accuracy = accuracy_table(trained)
    write_netcdf(accuracy, config.out / "accuracy.nc")
    targets, agreed = agreed_top_k(accuracy, config.top_k)

    # one data module for every evaluation: same data config, so the same normalisation as training
    datamodule = RecordedDataModule(**config.data)
    datamodule.setup("test")
    models, scorers = load_scorers(config, trained, datamodule)
    result, meis = run_generalisation(config, list(architectures), trained, targets, datamodule, models, scorers)
    reconstructions = None
    if config.reconstructions is not None:
        reconstructions = run_reconstructions(config, list(architectures), trained, models, scorers, datamodule)
    similarity = None
    if config.similarity is not None:
        similarity = model_similarity(trained, datamodule, config.similarity, torch.device(config.device),
                                      config.out / "similarity.nc")
    report = write_report(config, accuracy, result, meis, reconstructions, similarity, skipped, agreed)
    print(f"compare: report -> {report}")
    return report

