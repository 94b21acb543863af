"""LightningDataModule over a dataset file: every batch comes from one session, sessions interleaved.

Two paths, chosen by `in_memory` (or automatically by size):
- in memory: each session's images are preprocessed once into one float32 tensor; a batch is a
  single tensor index (no per-sample Python work);
- lazy: images stay on disk and each batch is one sorted h5py read plus preprocessing, so sessions
  larger than RAM work (responses, always small, are held in memory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from encoders.datasets.io import list_sessions, read_arrays
from encoders.datasets.schema import SESSIONS_GROUP, TIERS
from encoders.datasets.transforms import ImageTransform
from encoders.errors import DatasetError


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


class TierDataset(Dataset):
    """All images of one tier, flat-indexed across sessions; fetched a whole batch at a time."""

    def __init__(self, images: SessionImages, tier: str):
        self.images = images
        self.tier = tier
        self.sessions: list[str] = []
        self.local: list[torch.Tensor] = []  # per session: indices into the session's arrays
        for session, table in images.tables.items():
            self.sessions.append(session)
            self.local.append(torch.from_numpy(np.flatnonzero(table.tiers == tier)))
        sizes = [len(x) for x in self.local]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def groups(self) -> list[np.ndarray]:
        """Flat indices of each session, for the batch sampler."""
        return [np.arange(self.offsets[i], self.offsets[i + 1]) for i in range(len(self.sessions))]

    def __getitems__(self, flat: list[int]) -> dict:
        flat_t = torch.as_tensor(flat, dtype=torch.long)
        s = int(np.searchsorted(self.offsets, flat_t[0].item(), side="right") - 1)
        if flat_t.min() < self.offsets[s] or flat_t.max() >= self.offsets[s + 1]:
            raise IndexError("a batch must come from one session")
        session = self.sessions[s]
        index = self.local[s][flat_t - int(self.offsets[s])]
        table = self.images.tables[session]
        batch = {
            "images": self.images.get(session, index),
            "responses": table.responses[index],
            "session": session,
            "image_index": index,
        }
        if table.trials is not None:
            batch["trials"] = table.trials[index]
        return batch

    def __getitem__(self, flat: int) -> dict:
        return self.__getitems__([flat])


def _identity(batch: dict) -> dict:
    return batch


class SessionBatchSampler(Sampler[list[int]]):
    """Batches that each hold one session's images; the order of batches mixes sessions.

    Deterministic given (seed, epoch). With several processes (DDP) each rank takes every
    world_size-th batch, truncated to the same count so no rank waits on another.
    """

    def __init__(
        self, groups: list[np.ndarray], batch_size: int, shuffle: bool, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.groups = [g for g in groups if len(g)]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for group in self.groups:
            order = rng.permutation(group) if self.shuffle else group
            batches += [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank :: self.world_size][:per_rank]

    def __iter__(self):
        # Lightning calls set_epoch before every epoch; outside Lightning, call it yourself.
        yield from self._batches()

    def __len__(self) -> int:
        n = sum(-(-len(g) // self.batch_size) for g in self.groups)
        return n // self.world_size if self.world_size > 1 else n


class RecordedDataModule(pl.LightningDataModule):
    """Batches of (images, responses) from a dataset file in the encoders format.

    Args:
        path: the dataset file (see data/README.md).
        sessions: session ids to use; None = all in the file.
        batch_size: training batch size; eval_batch_size for validation/test/predict.
        grayscale, crop, resize: image geometry (crop = pixels removed top, bottom, left, right).
        normalize: z-score pixels with the mean/std of the training tier of the chosen sessions.
        in_memory: True/False to force a path; None = in memory when the preprocessed images fit
            in `memory_limit_gb`.
        num_workers: DataLoader workers (0 is fastest for the in-memory path).
        seed: order of training batches.
    """

    def __init__(
        self,
        path: str,
        sessions: list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        grayscale: bool = True,
        crop: tuple[int, int, int, int] = (0, 0, 0, 0),
        resize: tuple[int, int] | None = None,
        normalize: bool = True,
        in_memory: bool | None = None,
        memory_limit_gb: float = 4.0,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.path = Path(path)
        self.requested_sessions = list(sessions) if sessions else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.geometry = ImageTransform(grayscale=grayscale, crop=tuple(crop), resize=tuple(resize) if resize else None)
        self.normalize = normalize
        self.in_memory = in_memory
        self.memory_limit_gb = memory_limit_gb
        self.num_workers = num_workers
        self.seed = seed
        self.tables: dict[str, SessionTable] = {}
        self.transform: ImageTransform | None = None
        self.images: SessionImages | None = None

    # ---- loading -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        available = list_sessions(self.path)
        sessions = self.requested_sessions or available
        unknown = [s for s in sessions if s not in available]
        if unknown:
            raise DatasetError(self.path, f"unknown session(s) {unknown}; the file has {available}", field="sessions")
        with h5py.File(self.path, "r") as f:
            shapes = {s: f[f"{SESSIONS_GROUP}/{s}/images"].shape for s in sessions}
        model_shape = self.geometry.output_shape(next(iter(shapes.values()))[1:])
        n_images = sum(shape[0] for shape in shapes.values())
        size_gb = n_images * int(np.prod(model_shape)) * 4 / 1e9
        in_memory = self.in_memory if self.in_memory is not None else size_gb <= self.memory_limit_gb

        for s in sessions:
            fields = ["responses", "tier", "image_id", "neuron_id"]
            with h5py.File(self.path, "r") as f:
                has_trials = "trials" in f[f"{SESSIONS_GROUP}/{s}"]
            arrays = read_arrays(self.path, s, fields + (["trials"] if has_trials else []))
            self.tables[s] = SessionTable(
                responses=torch.as_tensor(arrays["responses"], dtype=torch.float32),
                trials=torch.as_tensor(arrays["trials"], dtype=torch.float32) if has_trials else None,
                tiers=np.asarray(arrays["tier"]).astype(str),
                image_ids=arrays["image_id"],
                neuron_ids=[str(x) for x in arrays["neuron_id"]],
                images=None,
            )
        mean, std = self._pixel_statistics(sessions, in_memory)
        self.transform = ImageTransform(
            grayscale=self.geometry.grayscale, crop=self.geometry.crop, resize=self.geometry.resize, mean=mean, std=std
        )
        if in_memory:
            for s in sessions:
                # geometry was already applied while computing statistics; only z-score here
                self.tables[s].images = self.transform.from_pixels(self.tables[s].images)
        self.images = SessionImages(self.path, self.tables, self.transform)

    def _pixel_statistics(self, sessions: list[str], in_memory: bool) -> tuple[float, float]:
        total = total_sq = count = 0.0
        with h5py.File(self.path, "r") as f:
            for s in sessions:
                raw = f[f"{SESSIONS_GROUP}/{s}/images"]
                train = np.flatnonzero(self.tables[s].tiers == "train")
                if in_memory:
                    pixels = self.geometry.apply_chunked(raw)
                    self.tables[s].images = pixels
                    x = pixels[torch.from_numpy(train)].double()
                    total += x.sum().item()
                    total_sq += (x * x).sum().item()
                    count += x.numel()
                else:
                    is_train = self.tables[s].tiers == "train"
                    for i in range(0, raw.shape[0], 512):
                        # contiguous block reads, then select: fancy h5py indexing is slow
                        x = self.geometry(raw[i : i + 512][is_train[i : i + 512]]).double()
                        total += x.sum().item()
                        total_sq += (x * x).sum().item()
                        count += x.numel()
        if not self.normalize:
            return 0.0, 1.0
        mean = total / count
        std = max((total_sq / count - mean * mean) ** 0.5, 1e-8)
        return mean, std

    # ---- what models need to build themselves ---------------------------------------------------
    @property
    def sessions(self) -> list[str]:
        return list(self.tables)

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of model-space images."""
        with h5py.File(self.path, "r") as f:
            shape = f[f"{SESSIONS_GROUP}/{self.sessions[0]}/images"].shape[1:]
        return self.transform.output_shape(shape)

    def raw_image_shape(self, session: str) -> tuple[int, ...]:
        """Shape of one stored image, (H, W) or (C, H, W), in pixel space."""
        with h5py.File(self.path, "r") as f:
            return tuple(f[f"{SESSIONS_GROUP}/{session}/images"].shape[1:])

    def session_info(self) -> dict[str, dict]:
        """Per session: neuron ids and mean training response (readout bias initialisation)."""
        info = {}
        for s, table in self.tables.items():
            train = torch.from_numpy(np.flatnonzero(table.tiers == "train"))
            info[s] = {
                "neuron_ids": table.neuron_ids,
                "mean_response": table.responses[train].mean(0).tolist(),
                "n_train": int(len(train)),
            }
        return info

    def tier_data(self, session: str, tier: str) -> dict[str, torch.Tensor]:
        """A whole tier of one session in memory: images (model space), responses, trials, ids."""
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        if session not in self.tables:
            raise DatasetError(self.path, f"unknown session; the data module has {self.sessions}", session=session)
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

    # ---- loaders -----------------------------------------------------------------------------
    def _loader(self, tier: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = TierDataset(self.images, tier)
        rank, world = 0, 1
        if self.trainer is not None and shuffle:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = SessionBatchSampler(dataset.groups(), batch_size, shuffle, self.seed, rank, world)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=_identity, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
