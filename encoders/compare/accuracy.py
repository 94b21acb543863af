"""The grid's per-neuron test metrics as one labelled table, and the neurons every architecture predicts well."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from encoders.compare.grid import TrainedModel
from encoders.errors import EncodersError
from encoders.synthesis.targets import Target


def accuracy_table(trained: Sequence[TrainedModel]) -> xr.Dataset:
    """Test metrics of every model: dims (architecture, seed, neuron); coords session, neuron_id, epochs.

    A seed an architecture lacks is NaN. Variables are those of the models' test_metrics.nc
    (correlation, FEVE, ...; ground_truth_correlation on a twin).
    """
    architectures = list(dict.fromkeys(m.architecture for m in trained))
    seeds = sorted({m.seed for m in trained})
    tables = {}
    for member in trained:
        table = xr.load_dataset(member.metrics, engine="h5netcdf")
        tables[(member.architecture, member.seed)] = table
    first = next(iter(tables.values()))
    keys = list(zip(first.session.values.tolist(), first.neuron_id.values.tolist()))
    names = [n for n in first.data_vars]
    values = {n: np.full((len(architectures), len(seeds), len(keys)), np.nan) for n in names}
    epochs = np.full((len(architectures), len(seeds)), -1)
    for (architecture, seed), table in tables.items():
        if list(zip(table.session.values.tolist(), table.neuron_id.values.tolist())) != keys:
            raise EncodersError(f"{architecture}/seed{seed}: its test table lists other neurons than the first model's")
        a, s = architectures.index(architecture), seeds.index(seed)
        for name in names:
            if name in table:
                values[name][a, s] = table[name].values
        epochs[a, s] = int(table.attrs.get("epochs", -1))
    return xr.Dataset(
        {name: (("architecture", "seed", "neuron"), v) for name, v in values.items()}
        | {"epochs": (("architecture", "seed"), epochs)},
        coords={"architecture": architectures, "seed": seeds, "session": ("neuron", [k[0] for k in keys]),
                "neuron_id": ("neuron", [k[1] for k in keys])},
    )


def agreed_top_k(accuracy: xr.Dataset, k: int) -> tuple[list[Target], np.ndarray]:
    """The k neurons with the highest test correlation in the WORST architecture (mean over seeds).

    Ranking by the minimum over architectures picks neurons every architecture predicts well, so
    no architecture's MEIs are made for neurons it cannot model. Returns targets and their scores.
    """
    per_architecture = accuracy.correlation.mean("seed", skipna=True)
    agreed = per_architecture.min("architecture", skipna=False).values
    order = np.argsort(np.where(np.isfinite(agreed), -agreed, np.inf), kind="stable")[:k]
    targets = [(str(accuracy.session.values[i]), str(accuracy.neuron_id.values[i])) for i in order]
    return targets, agreed[order]
