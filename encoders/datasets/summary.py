"""A per-session summary of a dataset file, as a table for people."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

from encoders.datasets.io import list_sessions, root_attrs
from encoders.datasets.schema import SESSIONS_GROUP


def summarise(path: str | Path) -> list[dict]:
    """One row per session: counts, tiers, repeats, image shape and response statistics."""
    rows = []
    sessions = list_sessions(path)  # validates first: a broken file gets a named error, not a traceback
    with h5py.File(path, "r") as f:
        for sid in sessions:
            group = f[f"{SESSIONS_GROUP}/{sid}"]
            tiers = group["tier"].asstr()[()]
            responses = group["responses"][()]
            row = {
                "session": sid,
                "neurons": responses.shape[1],
                "images": responses.shape[0],
                "train": int((tiers == "train").sum()),
                "validation": int((tiers == "validation").sum()),
                "test": int((tiers == "test").sum()),
                "image_shape": tuple(group["images"].shape[1:]),
                "repeats": int(group["trials"].shape[1]) if "trials" in group else 0,
                "mean_response": float(responses.mean()),
            }
            if "trials" in group:
                trials = group["trials"][()]
                row["max_repeats_used"] = int((~np.isnan(trials)).any(axis=2).sum(axis=1).max())
            rows.append(row)
    return rows


def print_summary(path: str | Path) -> None:
    rows = summarise(path)
    attrs = root_attrs(path)
    table = Table(title=f"{path} — {attrs.get('title', '')} (schema {attrs.get('schema_version')})")
    for column in ("session", "neurons", "images", "train", "validation", "test", "repeats", "image_shape", "mean_response"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in (
            "session", "neurons", "images", "train", "validation", "test", "repeats", "image_shape", "mean_response")))
    table.add_row("total", str(sum(r["neurons"] for r in rows)), str(sum(r["images"] for r in rows)),
                  *(str(sum(r[t] for r in rows)) for t in ("train", "validation", "test")), "", "", "")
    Console(width=140).print(table)
