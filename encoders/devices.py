"""The `--device` of every command: a device this machine can use, or one line naming the option."""

from __future__ import annotations

import torch

from encoders.errors import EncodersError


def usable_device(value: str, option: str = "--device") -> torch.device:
    """`value` as a torch.device this machine has; EncodersError naming `option` otherwise (before any work)."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise EncodersError(f"{option}: {value!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EncodersError(f"{option}: {value!r} but this machine has no CUDA device; use cpu")
        if device.index is not None and device.index >= count:
            raise EncodersError(f"{option}: {value!r} but this machine has {count} CUDA device(s) (0..{count - 1})")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise EncodersError(f"{option}: {value!r} is not available on this machine; use cpu" + (" or cuda" if torch.cuda.is_available() else ""))
