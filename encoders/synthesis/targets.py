"""Which neurons (and sessions) a product is made for: parsing, validation against a model, top-k choice.

Every id is checked before any optimisation starts, so a typo costs a one-line error, not an hour.
A model here is anything with `sessions` and `neuron_ids(session)` (EncodingModel, Ensemble).
"""

from __future__ import annotations

import sys

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from encoders.contract import device_of
from encoders.errors import EncodersError
from encoders.metrics import correlation

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording

Target = tuple[str, str]  # (session, neuron_id)

MAX_LISTED = 12  # ids listed in an error message before "..."


def _listing(values: Sequence[str]) -> str:
    shown = ", ".join(map(str, values[:MAX_LISTED]))
    more = f", ... ({len(values)} in all)" if len(values) > MAX_LISTED else ""
    return f"[{shown}{more}]"


def parse_target(text: str) -> Target:
    """'SESSION/NEURON_ID' -> (session, neuron_id); the first '/' separates them."""
    session, sep, neuron = str(text).partition("/")
    if not sep or not session or not neuron:
        raise EncodersError(f"neuron {text!r} must be written SESSION/NEURON_ID")
    return session, neuron


def check_sessions(model: nn.Module, sessions: Sequence[str]) -> None:
    """Raise EncodersError naming the first session the model does not have, and listing those it has."""
    for session in sessions:
        if session not in model.sessions:
            raise EncodersError(f"unknown session {session!r}; the model has sessions {_listing(model.sessions)}")


def resolve_targets(model: nn.Module, targets: Sequence[Target]) -> list[tuple[str, int]]:
    """(session, neuron_id) -> (session, column of the model's output); EncodersError for unknown ids."""
    if not targets:
        raise EncodersError("no neurons given")
    check_sessions(model, [session for session, _ in targets])
    columns = {session: {n: i for i, n in enumerate(model.neuron_ids(session))} for session, _ in targets}
    resolved = []
    for session, neuron in targets:
        if str(neuron) not in columns[session]:
            raise EncodersError(
                f"unknown neuron id {neuron!r} in session {session!r}; it has {_listing(model.neuron_ids(session))}"
            )
        resolved.append((session, columns[session][str(neuron)]))
    return resolved


def all_targets(model: nn.Module) -> list[Target]:
    """Every neuron of every session, in model order."""
    return [(session, neuron) for session in model.sessions for neuron in model.neuron_ids(session)]


def model_space_images(model: nn.Module, recording: Recording, session: str, tier: str) -> dict[str, torch.Tensor]:
    """`recording.tier_data`, with images mapped into the MODEL's input space.

    A recording made outside training (CLI) computes its own normalisation statistics; going
    through pixel space makes its images exactly what the checkpoint was trained on.
    """
    data = dict(recording.tier_data(session, tier))
    pixels = recording.transform.to_pixels(data["images"])
    data["images"] = model.image_transform.from_pixels(pixels)
    return data


@torch.no_grad()
def validation_correlations(model: nn.Module, recording: Recording, tier: str = "validation", batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per session, the correlation of each neuron's prediction with its responses on `tier`."""
    out = {}
    for session in model.sessions:
        if session not in recording.sessions:
            continue
        data = model_space_images(model, recording, session, tier)
        device = device_of(model)
        rates = torch.cat([model(x.to(device), session).cpu() for x in data["images"].split(batch_size)])
        out[session] = correlation(rates, data["responses"]).numpy()
    return out


def top_k_targets(model: nn.Module, recording: Recording, k: int, tier: str = "validation") -> tuple[list[Target], list[float]]:
    """The k neurons (over all sessions) best predicted on `tier`, best first, and their correlations.

    NaN correlations (constant responses) rank last.
    """
    if k < 1:
        raise EncodersError(f"top_k must be a positive number of neurons, got {k}")
    scores = validation_correlations(model, recording, tier)
    table = [(float(r), session, model.neuron_ids(session)[i])
             for session, values in scores.items() for i, r in enumerate(values)]
    if not table:
        raise EncodersError("the recording shares no session with the model")
    table.sort(key=lambda row: -row[0] if np.isfinite(row[0]) else np.inf)  # stable: ties keep model order
    if k > len(table):
        print(f"top_k {k}: the model has {len(table)} neurons in the data's sessions; taking all {len(table)}", file=sys.stderr)
    chosen = table[:k]
    return [(session, neuron) for _, session, neuron in chosen], [r for r, _, _ in chosen]


def check_choice(neurons: Sequence[str] | None, top_k: int | None) -> list[Target] | None:
    """Parse an explicit neuron list, or accept top_k; exactly one of the two must be given."""
    if (neurons is None) == (top_k is None):
        raise EncodersError("choose neurons either by an explicit list (SESSION/NEURON_ID ...) or by top_k, not both")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise EncodersError(f"top_k must be a positive number of neurons, got {top_k!r}")
    if neurons is None:
        return None
    targets = [parse_target(n) for n in neurons]
    if not targets:
        raise EncodersError("the neuron list is empty")
    if len(set(targets)) != len(targets):
        raise EncodersError("the neuron list names a neuron twice")
    return targets
