"""`encoders compare SPEC.yaml`: train the grid, make and score MEIs, measure similarity, write the report.

Each stage keeps its outputs in the product store (written atomically, skipped when they exist for
the same inputs), so a killed comparison run again continues where it stopped.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from encoders.compare.accuracy import accuracy_table, agreed_top_k
from encoders.compare.config import CompareConfig, check_machine
from encoders.compare.generalisation import load_scorers, run_generalisation
from encoders.compare.grid import available_architectures, train_grid, unavailable
from encoders.compare.reconstructions import run_reconstructions
from encoders.compare.report import write_report
from encoders.compare.brain_similarity import brain_similarity
from encoders.compare.similarity import model_similarity
from encoders.datasets.recording import Recording
from encoders.outputs import write_netcdf


def recording_of(data: dict) -> Recording:
    """The data of the spec's `data:` block without Lightning: the same sessions, geometry and normalisation as training."""
    accepted = inspect.signature(Recording).parameters
    return Recording(**{name: value for name, value in data.items() if name in accepted})


def run_compare(config: CompareConfig) -> Path:
    """The whole comparison; returns the report's path."""
    os.environ.setdefault("WANDB_MODE", "offline")  # nothing may reach the network unasked
    if config.threads is not None:
        # on a shared CPU machine, threads that wait for a busy core stall each other: 1 thread
        # trained 2.5-4x faster than 2 on 2 cores shared with other jobs
        torch.set_num_threads(config.threads)
    check_machine(config)
    architectures = available_architectures(config)
    skipped = {name: unavailable(a) for name, a in config.architectures.items() if name not in architectures}
    config.out.mkdir(parents=True, exist_ok=True)
    trained = train_grid(config, architectures)

    accuracy = accuracy_table(trained)
    write_netcdf(accuracy, config.out / "accuracy.nc")
    targets, agreed = agreed_top_k(accuracy, config.top_k)

    recording = recording_of(config.data)  # one for every evaluation
    models, scorers = load_scorers(config, trained, recording)
    result, meis = run_generalisation(config, list(architectures), trained, targets, recording, models, scorers)
    reconstructions = None
    if config.reconstructions is not None:
        reconstructions = run_reconstructions(config, list(architectures), trained, models, scorers, recording)
    similarity = brain = None
    if config.similarity is not None:
        similarity = model_similarity(trained, recording, config.similarity, torch.device(config.device),
                                      config.out / "similarity.nc")
        brain = brain_similarity(trained, recording, config.similarity, torch.device(config.device),
                                 config.out / "brain_similarity.nc")
    report = write_report(config, accuracy, result, meis, reconstructions, similarity, skipped, agreed, brain)
    print(f"compare: report -> {report}")
    return report
