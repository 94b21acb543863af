"""A recording, Lightning-free: a data file's sessions with their images in a model's input space.

What products, twin scoring, similarity diagnostics, comparisons and export read: tiers, images
(model space), responses, trials, image and neuron ids, the image transform, and the twin when the
file holds one. `RecordedDataModule` wraps one for Lightning's loaders. The file is opened once to
validate and load it; images are held in memory as one float32 tensor per session when they fit
(`in_memory`), else read per batch from the file (one handle per process).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from encoders.datasets.io import read_fields
from encoders.datasets.receptive_fields import rf_centres
from encoders.datasets.schema import GROUND_TRUTH_GROUP, SESSIONS_GROUP, TIERS
from encoders.datasets.transforms import ImageTransform
from encoders.datasets.validation import open_file, validate_open_file
from encoders.errors import DatasetError, EncodersError

if TYPE_CHECKING:
    from encoders.contract import ResponseModel
    from encoders.twin import Twin

STATISTICS_CHUNK = 1024  # images per float64 block when summing pixel statistics (bounded memory)


@dataclass
class SessionTable:
    """What is held in memory for one session."""

    responses: torch.Tensor  # (N, neurons) float32
    trials: torch.Tensor | None  # (N, repeats, neurons) float32, NaN = missing
    tiers: np.ndarray  # (N,) str
    image_ids: np.ndarray  # (N,) int64
    neuron_ids: list[str]
    images: torch.Tensor | None  # (N, C, H, W) model space, in-memory path only


class SessionImages:
    """Image access for one tier across sessions, in memory or lazily from the HDF5 file."""

    def __init__(self, path: Path, tables: dict[str, SessionTable], transform: ImageTransform):
        self.path = path
        self.tables = tables
        self.transform = transform
        self._handle: h5py.File | None = None
        self._pid: int | None = None

    def get(self, session: str, index: torch.Tensor) -> torch.Tensor:
        table = self.tables[session]
        if table.images is not None:
            return table.images[index]
        # One read per image: with one image per HDF5 chunk this is ~100x faster than h5py's
        # fancy indexing, which also demands sorted indices.
        stored = self._file()[f"{SESSIONS_GROUP}/{session}/images"]
        return self.transform(np.stack([stored[i] for i in index.tolist()]))

    def _file(self) -> h5py.File:
        # One handle per process: DataLoader workers must not share an h5py handle.
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state


class Recording:
    """A data file's sessions in model space.

    Args:
        path: the dataset file (see data/README.md).
        sessions: session ids to use; None = all in the file.
        grayscale, crop, resize: image geometry (crop = pixels removed top, bottom, left, right).
        normalize: z-score pixels with the mean/std of the training tier of the chosen sessions.
        in_memory: True/False to force a path; None = in memory when the images fit in `memory_limit_gb`.
        transform_from: a checkpoint whose image transform these data must share (its statistics, and
            a geometry other than its own refused): a new session on a trained core.
        transform: an image transform to use as it is (a trained model's: its statistics are not
            recomputed); its geometry replaces grayscale/crop/resize.
    """

    def __init__(
        self,
        path: str | Path,
        sessions: Sequence[str | int] | None = None,
        grayscale: bool = True,
        crop: tuple[int, int, int, int] = (0, 0, 0, 0),
        resize: tuple[int, int] | None = None,
        normalize: bool = True,
        in_memory: bool | None = None,
        memory_limit_gb: float = 4.0,
        transform_from: str | None = None,
        transform: ImageTransform | None = None,
    ):
        self.path = Path(path)
        if transform is not None:
            grayscale, crop, resize = transform.grayscale, transform.crop, transform.resize
        self.geometry = ImageTransform(grayscale=grayscale, crop=tuple(crop), resize=tuple(resize) if resize else None)
        self.normalize = normalize
        self.transform_from = transform_from
        requested = [str(s) for s in sessions] if sessions else None
        self.tables: dict[str, SessionTable] = {}
        with open_file(self.path) as f:  # opened once: validated, read, statistics, twin
            available = validate_open_file(f, self.path)
            chosen = requested or available
            unknown = [s for s in chosen if s not in available]
            if unknown:
                raise DatasetError(self.path, f"unknown session(s) {unknown}; the file has {available}", field="sessions")
            raw = {s: f[f"{SESSIONS_GROUP}/{s}/images"] for s in chosen}
            self._raw_shapes = {s: tuple(raw[s].shape[1:]) for s in chosen}
            model_shape = self.geometry.output_shape(next(iter(self._raw_shapes.values())))
            n_images = sum(raw[s].shape[0] for s in chosen)
            size_gb = n_images * int(np.prod(model_shape)) * 4 / 1e9
            self.in_memory = in_memory if in_memory is not None else size_gb <= memory_limit_gb
            for s in chosen:
                fields = ["responses", "tier", "image_id", "neuron_id"]
                has_trials = "trials" in f[f"{SESSIONS_GROUP}/{s}"]
                arrays = read_fields(f, self.path, s, fields + (["trials"] if has_trials else []))
                self.tables[s] = SessionTable(
                    responses=torch.as_tensor(arrays["responses"], dtype=torch.float32),
                    trials=torch.as_tensor(arrays["trials"], dtype=torch.float32) if has_trials else None,
                    tiers=np.asarray(arrays["tier"]).astype(str),
                    image_ids=arrays["image_id"],
                    neuron_ids=[str(x) for x in arrays["neuron_id"]],
                    images=None,
                )
            if transform is not None:
                if self.in_memory:
                    for s in chosen:
                        self.tables[s].images = self.geometry.apply_chunked(raw[s])
                mean, std = transform.mean, transform.std
            else:
                mean, std = self._pixel_statistics(raw)
                if transform_from is not None:
                    mean, std = self._reference_statistics()
            self._twin_sessions = available if GROUND_TRUTH_GROUP in f else None
        self.transform = ImageTransform(grayscale=self.geometry.grayscale, crop=self.geometry.crop,
                                        resize=self.geometry.resize, mean=mean, std=std)
        if self.in_memory:
            for s in chosen:
                # geometry was already applied while computing statistics; only z-score here, in place
                # (as `transform.from_pixels`, without two temporary copies of the session's images)
                self.tables[s].images.sub_(self.transform.mean).div_(self.transform.std)
        self.images = SessionImages(self.path, self.tables, self.transform)

    @classmethod
    def for_model(cls, path: str | Path, model: ResponseModel, in_memory: bool | None = None) -> "Recording":
        """The model's sessions of `path`, in the model's own input space (its transform, statistics included),
        checked to be the data it was trained on (`check_model`)."""
        recording = cls(path, sessions=model.sessions, transform=model.image_transform, in_memory=in_memory)
        recording.check_model(model)
        return recording

    def _pixel_statistics(self, raw: dict[str, h5py.Dataset]) -> tuple[float, float]:
        total = total_sq = count = 0.0
        for s, stored in raw.items():
            train = np.flatnonzero(self.tables[s].tiers == "train")
            if self.in_memory:
                pixels = self.geometry.apply_chunked(stored)
                self.tables[s].images = pixels
                for index in torch.from_numpy(train).split(STATISTICS_CHUNK):  # float64 copies of a chunk, not the tier
                    x = pixels[index].double()
                    total += x.sum().item()
                    total_sq += (x * x).sum().item()
                    count += x.numel()
            else:
                is_train = self.tables[s].tiers == "train"
                for i in range(0, stored.shape[0], 512):
                    # contiguous block reads, then select: fancy h5py indexing is slow
                    x = self.geometry(stored[i : i + 512][is_train[i : i + 512]]).double()
                    total += x.sum().item()
                    total_sq += (x * x).sum().item()
                    count += x.numel()
        if not self.normalize:
            return 0.0, 1.0
        mean = total / count
        std = max((total_sq / count - mean * mean) ** 0.5, 1e-8)
        return mean, std

    def _reference_statistics(self) -> tuple[float, float]:
        """The pixel mean and std of `transform_from`'s transform, after checking its geometry is this data's."""
        from encoders.checkpoints import read_checkpoint, upgrade

        info = upgrade(read_checkpoint(self.transform_from)).get("hyper_parameters", {}).get("data_info") or {}
        if "transform" not in info:
            raise EncodersError(f"{self.transform_from}: not a checkpoint of a trained model (no image transform)")
        reference = ImageTransform.from_state(info["transform"])
        theirs = {"grayscale": reference.grayscale, "crop": list(reference.crop), "resize": reference.resize and list(reference.resize)}
        ours = {"grayscale": self.geometry.grayscale, "crop": list(self.geometry.crop),
                "resize": self.geometry.resize and list(self.geometry.resize)}
        if theirs != ours:
            raise EncodersError(f"{self.path}: data image transform {ours} differs from the checkpoint {self.transform_from}'s "
                                f"{theirs}; set data.grayscale/crop/resize as in its training")
        return reference.mean, reference.std

    # ---- what models and products read -----------------------------------------------------------
    @functools.cached_property
    def twin(self) -> Twin | None:
        """The data file's ground truth (a synthetic twin), or None for recorded data."""
        if self._twin_sessions is None:
            return None
        from encoders.twin import Twin

        return Twin(self.path, sorted(self._twin_sessions))

    @property
    def sessions(self) -> list[str]:
        return list(self.tables)

    def neuron_ids(self, session: str) -> list[str]:
        return list(self.tables[session].neuron_ids)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of model-space images."""
        return self.transform.output_shape(self._raw_shapes[self.sessions[0]])

    def raw_image_shape(self, session: str) -> tuple[int, ...]:
        """Shape of one stored image, (H, W) or (C, H, W), in pixel space."""
        return self._raw_shapes[session]

    def session_info(self) -> dict[str, dict]:
        """Per session: neuron ids, mean training response (readout bias initialisation), the number of
        training images and, when the images are held in memory, "rf_centre": each neuron's receptive-field
        centre [x, y] in model-input pixels estimated from the training tier
        (`encoders.datasets.receptive_fields.rf_centres`; a readout's init_mu "data" starts there).
        The lazy path has no centres: it would have to read every training image once more."""
        info = {}
        for s, table in self.tables.items():
            train = torch.from_numpy(np.flatnonzero(table.tiers == "train"))
            info[s] = {
                "neuron_ids": table.neuron_ids,
                "mean_response": table.responses[train].mean(0).tolist(),
                "n_train": int(len(train)),
            }
            if table.images is not None:
                info[s]["rf_centre"] = [list(xy) for xy in self._rf_centres(s, train)]
        return info

    def model_info(self) -> dict:
        """What a model built for these data stores (`EncodingModel`'s data_info): sessions, input shape, transform."""
        return {"sessions": self.session_info(), "input_shape": list(self.input_shape), "transform": self.transform.state()}

    @functools.cached_property
    def _rf_cache(self) -> dict[str, list[tuple[float, float]]]:
        return {}

    def _rf_centres(self, session: str, train: torch.Tensor) -> list[tuple[float, float]]:
        """A session's receptive-field centres as plain (x, y) floats, estimated once (tens of ms a session)."""
        if session not in self._rf_cache:
            table = self.tables[session]
            centres = rf_centres(table.images[train], table.responses[train])
            self._rf_cache[session] = [(round(float(x), 4), round(float(y), 4)) for x, y in centres.tolist()]
        return self._rf_cache[session]

    def tier_data(self, session: str, tier: str) -> dict[str, torch.Tensor]:
        """A whole tier of one session in memory: images (model space), responses, trials, ids."""
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        if session not in self.tables:
            raise DatasetError(self.path, f"unknown session; the recording has {self.sessions}", session=session)
        table = self.tables[session]
        index = torch.from_numpy(np.flatnonzero(table.tiers == tier))
        out = {
            "images": self.images.get(session, index),
            "responses": table.responses[index],
            "image_id": torch.from_numpy(table.image_ids[index.numpy()]),
            "image_index": index,
        }
        if table.trials is not None:
            out["trials"] = table.trials[index]
        return out

    # ---- the one model-matches-data check ---------------------------------------------------------
    def check_model(self, model: ResponseModel | dict, sessions: Sequence[str] | None = None, what: str = "the checkpoint") -> None:
        """EncodersError in one line unless `model` (a response model, or a model's data_info) was made for these
        data: each session of `sessions` (default: every one of the model's) known to the model and present here
        with the same neuron ids, and the same model-space image shape. Every place that pairs a model with data
        (training a restored model, products, export) asks this one check."""
        if isinstance(model, dict):
            ids = {s: list(v["neuron_ids"]) for s, v in model["sessions"].items()}
            shape = tuple(model["input_shape"])
        else:
            ids = {s: list(model.neuron_ids(s)) for s in model.sessions}
            shape = tuple(model.input_shape)
        for session in sessions if sessions is not None else ids:
            if session not in ids:
                raise EncodersError(f"{self.path}: session {session!r} is not one {what} was trained on "
                                    f"({sorted(ids)}); choose data.sessions")
            if session not in self.tables:
                raise EncodersError(f"{self.path}: has no session {session!r} of {what} (it has {self.sessions})")
            if self.neuron_ids(session) != ids[session]:
                raise EncodersError(f"{self.path}: session {session!r} has {len(self.neuron_ids(session))} neurons with other "
                                    f"ids than {what}'s {len(ids[session])}; use the data the model was trained on")
        if tuple(self.input_shape) != shape:
            raise EncodersError(f"{self.path}: images map to {tuple(self.input_shape)} in model space, {what} takes "
                                f"{shape}; set data.grayscale/crop/resize as in its training")
