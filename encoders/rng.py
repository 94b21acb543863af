"""The state of every random number generator, as plain tensors and tuples.

Stored in checkpoints so that a resumed fit continues the random stream (dropout, sampled
readout positions) exactly where the interrupted one stopped. Only types that
`torch.load(weights_only=True)` accepts are used, so checkpoints stay loadable without unpickling.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    """torch (CPU and every CUDA device), numpy's global and Python's `random` states."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore(states: dict) -> None:
    """Set the generators to `states` from `capture` (CUDA only where both runs had the same devices)."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["gauss"])
    )
    random.setstate(_as_tuples(states["python"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value):
    # random.setstate wants tuples; a round trip through a checkpoint may turn them into lists
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
