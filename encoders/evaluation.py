"""Per-neuron evaluation of predictions: one labelled table (correlation, FEVE, oracle, ...) from gathered rows."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from encoders.metrics import correlation, correlation_to_average, feve, oracle_correlation, single_trial_correlation

UNITS = {
    "correlation": ("Pearson r of prediction and repeat-averaged response over images", "1"),
    "single_trial_correlation": ("Pearson r of prediction and single trials", "1"),
    "correlation_to_average": ("Pearson r of prediction and trial average (images with repeats)", "1"),
    "feve": ("fraction of explainable variance explained", "1"),
    "oracle_correlation": ("leave-one-out oracle correlation of trials", "1"),
}


def session_metrics(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-neuron metrics of one session from rows {rates, responses[, trials]} (one row per image)."""
    rates, responses = rows["rates"], rows["responses"]
    table = {"correlation": correlation(rates, responses)}
    trials = rows.get("trials")
    if trials is not None:
        has_repeats = (~torch.isnan(trials)).sum(1).amax(1) > 1  # images with >1 repeat
        if has_repeats.sum() > 2:
            r, t = rates[has_repeats], trials[has_repeats]
            table["single_trial_correlation"] = single_trial_correlation(r, t)
            table["correlation_to_average"] = correlation_to_average(r, t)
            table["feve"] = feve(r, t)
            table["oracle_correlation"] = oracle_correlation(t)
    return table


def metrics_table(per_session: dict[str, dict[str, torch.Tensor]], neuron_ids: dict[str, list[str]]) -> xr.Dataset:
    """One Dataset over all sessions' neurons (dim neuron, coords session and neuron_id); NaN where a metric is missing."""
    tables = []
    for session, table in per_session.items():
        ids = neuron_ids[session]
        values = {k: ("neuron", v.numpy().astype(np.float64)) for k, v in table.items()}
        tables.append(xr.Dataset(values, coords={"neuron_id": ("neuron", ids), "session": ("neuron", [session] * len(ids))}))
    if not tables:
        return xr.Dataset()
    results = xr.concat(tables, dim="neuron", join="outer", data_vars="all", coords="different", compat="equals")
    for name in results.data_vars:
        if name in UNITS:
            results[name].attrs.update({"long_name": UNITS[name][0], "units": UNITS[name][1]})
    return results


def test_table(encoder, results: xr.Dataset, recording, twin) -> xr.Dataset:
    """The per-neuron test table of a tested model, plus, on a twin, the correlation with the noiseless truth."""
    results = results.copy()
    if twin is not None:
        from encoders.twin.scoring import ground_truth_correlation

        values = np.full(results.sizes["neuron"], np.nan)
        for session in dict.fromkeys(results.session.values.tolist()):
            values[(results.session == session).values] = ground_truth_correlation(encoder, recording, session, twin).numpy()
        results["ground_truth_correlation"] = ("neuron", values)
        results["ground_truth_correlation"].attrs.update(
            {"long_name": "Pearson r of prediction and the twin's noiseless rates, test tier", "units": "1"})
    return results
