"""Checkpoints -> encoders: read safely (never unpickled), upgrade earlier formats, rebuild the `Encoder`.

Format 1 (before the encoder/training split) kept the core and readouts at the top of the
LightningModule (`core.*`, `readouts.<session>.*`), the data-derived hyperparameters as
`sessions`, `input_shape`, `transform`, and Gaussian readout features as (channels, neurons).
Format 2 nests them under `encoder.`, keeps the data-derived ones in `data_info`, and stores every
readout's features as (neurons, F). `upgrade` maps 1 -> 2, so checkpoints of earlier versions load,
resume and make the same products.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from encoders.encoder import Encoder
from encoders.errors import EncodersError

FORMAT = 2
LEGACY_DATA_KEYS = ("sessions", "input_shape", "transform")


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, read without ever unpickling code; EncodersError naming the file otherwise.

    `torch.load(weights_only=True)` accepts only tensors and plain containers, so a checkpoint
    that carries pickled objects (which could run code) is refused, not executed. Memory-mapped,
    so checking a large checkpoint before a fit resumes from it costs little.
    """
    path = Path(path)
    if not path.is_file():
        raise EncodersError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a cut-off one has no central directory
        raise EncodersError(f"{path}: not a readable encoders checkpoint (truncated, corrupt, or not a torch checkpoint at all)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(error), re.IGNORECASE)
        what = f" ({found.group(1)})" if found else ""
        raise EncodersError(
            f"{path}: refused: the checkpoint holds a pickled Python object{what}; checkpoints are loaded with "
            "weights_only=True, which allows only tensors and plain containers"
        ) from None
    except Exception as error:  # torch raises many types for truncated, corrupt or foreign files
        raise EncodersError(f"{path}: not a readable encoders checkpoint (corrupt or truncated?): {_first_line(error)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise EncodersError(f"{path}: not a model checkpoint (no state_dict inside)")
    return checkpoint


def upgrade(checkpoint: dict, trainable: Sequence[str] | None = None) -> dict:
    """Bring a checkpoint of an earlier format to the current one, in place; returns it.

    `trainable`: the names of the parameters the optimizer of today's model trains, in its order
    (a LightningModule's `named_parameters()` that require grad). Given, the optimizer states are
    brought along too, so a fit resumes from an old checkpoint: format 1 registered the readouts
    before the core, so its optimizer state is in another parameter order (and Gaussian features
    were transposed).
    """
    if checkpoint.get("encoders_format", 1) >= FORMAT:
        return checkpoint
    upgrade_hparams(checkpoint.setdefault("hyper_parameters", {}))
    gaussian = checkpoint["hyper_parameters"].get("readout", {}).get("type") == "gaussian"
    state = {}
    for key, value in checkpoint["state_dict"].items():
        if key.startswith(("core.", "readouts.")):
            if _transposed(key, gaussian):
                value = value.T.contiguous()  # (channels, neurons) -> (neurons, channels)
            key = f"encoder.{key}"
        state[key] = value
    checkpoint["state_dict"] = state
    if trainable is not None and checkpoint.get("optimizer_states"):
        _upgrade_optimizer_states(checkpoint, list(state), list(trainable), gaussian)
    checkpoint["encoders_format"] = FORMAT
    return checkpoint


def _transposed(key: str, gaussian: bool) -> bool:
    """Format 1 stored Gaussian readout features as (channels, neurons)."""
    return gaussian and ".readouts." in f".{key}" and key.endswith(".features")


def _upgrade_optimizer_states(checkpoint: dict, old_order: list[str], trainable: list[str], gaussian: bool) -> None:
    """Re-index format-1 optimizer states from the old parameter order to today's, in place.

    The old order is the state dict's key order (parameters and buffers, module by module, as
    `parameters()` walks them) restricted to the parameters being trained.
    """
    wanted = set(trainable)
    old = [name for name in old_order if name in wanted]
    if sorted(old) != sorted(trainable):
        raise EncodersError(f"cannot resume from this format-1 checkpoint: its parameters {sorted(set(old) ^ wanted)} "
                            "differ from the model's; start a new fit from its weights instead")
    position = {name: i for i, name in enumerate(trainable)}
    for optimizer in checkpoint["optimizer_states"]:
        groups = optimizer.get("param_groups", [])
        if sum(len(g["params"]) for g in groups) != len(old):
            raise EncodersError("cannot resume from this format-1 checkpoint: its optimizer holds "
                                f"{sum(len(g['params']) for g in groups)} parameters, the model trains {len(old)}")
        states = {}
        for index, values in optimizer.get("state", {}).items():
            name = old[int(index)]
            if _transposed(name, gaussian):
                values = {k: v.T.contiguous() if isinstance(v, torch.Tensor) and v.ndim == 2 else v for k, v in values.items()}
            states[position[name]] = values
        optimizer["state"] = states
        for group in groups:  # one group per optimizer here; params are indices in parameter order
            group["params"] = sorted(position[old[int(i)]] for i in group["params"])


def upgrade_hparams(hparams: dict) -> dict:
    """Format-1 hyperparameters (sessions, input_shape, transform at the top) -> data_info; in place."""
    if any(key in hparams for key in LEGACY_DATA_KEYS):
        info = {key: hparams.pop(key, None) for key in LEGACY_DATA_KEYS}
        hparams["data_info"] = info if info["sessions"] is not None else None
    return hparams


def load_encoder(path: str | Path) -> Encoder:
    """The trained Encoder of a checkpoint (eval mode, CPU), without Lightning; EncodersError for bad files."""
    path = Path(path)
    checkpoint = upgrade(read_checkpoint(path))
    hparams = checkpoint.get("hyper_parameters", {})
    info = hparams.get("data_info")
    if not info or "core" not in hparams or "readout" not in hparams:
        raise EncodersError(f"{path}: not an encoders checkpoint of a trained model (no core, readout or data_info)")
    encoder = Encoder(
        hparams["core"], hparams["readout"], info["sessions"], info["input_shape"], info["transform"],
        elu_offset=hparams.get("elu_offset", 0.0), channels_last=hparams.get("channels_last", True),
    )
    state = {key[len("encoder."):]: value for key, value in checkpoint["state_dict"].items() if key.startswith("encoder.")}
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        raise EncodersError(f"{path}: weights do not fit the model its hyperparameters describe ({_first_line(error)})") from None
    return encoder.eval()


def _first_line(error: BaseException) -> str:
    """`Type: first sentence` of an exception: torch's messages run to several lines of advice."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text.split('. ')[0]}"
