"""LightningDataModule over a dataset file: every batch comes from one session, sessions interleaved.

Two paths, chosen by `in_memory` (or automatically by size):
- in memory: each session's images are preprocessed once into one float32 tensor; a batch is a
  single tensor index (no per-sample Python work);
- lazy: images stay on disk and each batch is one sorted h5py read plus preprocessing, so sessions
  larger than RAM work (responses, always small, are held in memory).
"""

from __future__ import annotations

import functools

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from encoders.datasets.io import list_sessions, read_arrays
from encoders.datasets.receptive_fields import rf_centres
from encoders.datasets.schema import SESSIONS_GROUP, TIERS
from encoders.datasets.transforms import ImageTransform
from encoders.errors import DatasetError, EncodersError

if TYPE_CHECKING:
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
    world_size-th batch and all ranks get the same number of batches, so no rank waits on another
    in a collective: `balance="drop"` (training) drops the few batches left over, `balance="pad"`
    (evaluation) repeats one of the rank's batches instead, so no image is left out; the model
    drops repeated images by index when it gathers every rank's predictions.

    `resume(epoch, done)` makes the next pass over `epoch` skip the `done` batches that were
    already trained on (resuming a checkpoint saved mid-epoch).
    """

    def __init__(
        self, groups: list[np.ndarray], batch_size: int, shuffle: bool, seed: int = 0,
        rank: int = 0, world_size: int = 1, balance: str = "drop",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if balance not in ("drop", "pad"):
            raise ValueError(f"balance must be 'drop' or 'pad', got {balance!r}")
        self.groups = [g for g in groups if len(g)]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.balance = balance
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, done: int) -> None:
        """The next pass is `epoch` without its first `done` batches (of this rank)."""
        self.epoch = epoch
        self._resume = (epoch, done)

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for group in self.groups:
            order = rng.permutation(group) if self.shuffle else group
            batches += [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _batches(self) -> list[list[int]]:
        batches = self._all_batches()
        if self.world_size == 1:
            return batches
        mine = batches[self.rank :: self.world_size]
        if self.balance == "drop":
            return mine[: len(self)]
        # pad: a rank short of batches repeats one (its own, else the first); duplicates are dropped later
        filler = mine[-1] if mine else batches[0]
        return mine + [filler] * (len(self) - len(mine))

    def __iter__(self):
        batches = self._batches()
        skip = 0
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if epoch != self.epoch:  # the trainer moved on to another epoch: nothing to skip
                skip = 0
        yield from batches[skip:]

    def __len__(self) -> int:
        n = sum(-(-len(g) // self.batch_size) for g in self.groups)
        if self.world_size == 1:
            return n
        return n // self.world_size if self.balance == "drop" else -(-n // self.world_size)


class SessionLoader:
    """One tier's batches: a DataLoader over a SessionBatchSampler, for Lightning or plain loops.

    Deliberately not a DataLoader subclass: Lightning rebuilds DataLoaders to inject its own
    samplers (a DistributedSampler under DDP unless `use_distributed_sampler=False`, index tracking
    when predicting), which a custom batch sampler does not survive; any other iterable is used as
    it is. The batch sampler shards by rank itself.

    `epoch`, when given (the trainer's epoch counter), is read each time iteration starts: Lightning
    calls `set_epoch` only on `sampler`/`batch_sampler.sampler` attributes, and on a resumed fit it
    starts iterating before it does so, so it cannot be relied on to order epochs.
    """

    def __init__(
        self, dataset: Dataset, batch_sampler: SessionBatchSampler, num_workers: int, seed: int,
        epoch: Callable[[], int] | None = None,
    ):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self._epoch = epoch
        # a private generator: creating an iterator draws a base seed from it, and drawing from the
        # global one would shift dropout noise between a resumed and an uninterrupted run
        self.loader = DataLoader(
            dataset, batch_sampler=batch_sampler, collate_fn=_identity, num_workers=num_workers,
            persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict]:
        # a generator: nothing runs until the first batch is asked for, when the epoch is known
        if self._epoch is not None:
            epoch = self._epoch()
            if epoch != self.batch_sampler.epoch:
                self.batch_sampler.set_epoch(epoch)
        yield from self.loader


class ResumableSessionLoader(SessionLoader):
    """The training loader: saves its place in the epoch in checkpoints, so a fit resumed from a
    checkpoint written mid-epoch trains on exactly the batches it had not seen yet.

    Implements Lightning's `state_dict`/`load_state_dict` protocol for dataloaders: Lightning stores
    `state_dict()` in every checkpoint and calls `load_state_dict` only when it restarts an unfinished
    epoch, before iterating. The position is the trainer's count of batches processed this epoch
    (what Lightning counts as done when it restarts), not of batches fetched: it fetches one ahead.
    """

    def __init__(
        self, dataset: Dataset, batch_sampler: SessionBatchSampler, num_workers: int, seed: int,
        epoch: Callable[[], int], done: Callable[[], int],
    ):
        super().__init__(dataset, batch_sampler, num_workers, seed, epoch)
        self._done = done

    def state_dict(self) -> dict:
        sampler = self.batch_sampler
        return {
            "epoch": int(self._epoch()), "batches_done": int(self._done()), "seed": sampler.seed,
            "batch_size": sampler.batch_size, "world_size": sampler.world_size, "batches": len(sampler),
        }

    def load_state_dict(self, state: dict) -> None:
        sampler = self.batch_sampler
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= int(state["batches"]):  # saved after the epoch's last batch: nothing of it is left
            sampler.resume(epoch, len(sampler))
            return
        now = {"seed": sampler.seed, "batch_size": sampler.batch_size, "world_size": sampler.world_size, "batches": len(sampler)}
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            # another order of batches: skipping "the batches already seen" would skip other ones
            raise DatasetError(
                self.dataset.images.path,
                f"cannot resume mid-epoch: the training batches changed since the checkpoint (then, now): {changed}; "
                "resume with the same data settings and number of processes, or from an end-of-epoch checkpoint",
            )
        sampler.resume(epoch, done)


class DataArgumentError(EncodersError, ValueError):
    """A data module argument out of range (batch size, crop, resize, ...)."""


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_arguments(batch_size: int, eval_batch_size: int, crop, resize, memory_limit_gb: float, num_workers: int) -> None:
    """Values out of range fail here, in one line naming the argument, before any file is read or written."""
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if not _is_int(value) or value < 1:
            raise DataArgumentError(f"data.{name}: must be a positive integer, got {value!r}")
    if crop is None or len(crop) != 4 or not all(_is_int(c) and c >= 0 for c in crop):
        raise DataArgumentError(f"data.crop: must be four non-negative pixel counts (top, bottom, left, right), got {crop!r}")
    if resize is not None and (len(resize) != 2 or not all(_is_int(r) and r >= 1 for r in resize)):
        raise DataArgumentError(f"data.resize: must be null or (height, width) with positive sizes, got {list(resize)!r}")
    if not _is_int(num_workers) or num_workers < 0:
        raise DataArgumentError(f"data.num_workers: must be a non-negative integer, got {num_workers!r}")
    if not memory_limit_gb >= 0:
        raise DataArgumentError(f"data.memory_limit_gb: must be >= 0, got {memory_limit_gb!r}")


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
        transform_from: a checkpoint whose image transform these data must share: its pixel statistics
            are used instead of this data's (a new session on a trained core sees images as the core
            did), and a grayscale/crop/resize other than its own is refused. Set by `model.init_from`.
    """

    def __init__(
        self,
        path: str,
        sessions: list[str | int] | None = None,
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
        transform_from: str | None = None,
    ):
        super().__init__()
        check_arguments(batch_size=batch_size, eval_batch_size=eval_batch_size, crop=crop, resize=resize,
                        memory_limit_gb=memory_limit_gb, num_workers=num_workers)
        self.save_hyperparameters()
        self.path = Path(path)
        # session ids are strings; YAML and flags read numeric ids (Cowley's 210305) as numbers
        self.requested_sessions = [str(s) for s in sessions] if sessions else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.geometry = ImageTransform(grayscale=grayscale, crop=tuple(crop), resize=tuple(resize) if resize else None)
        self.normalize = normalize
        self.in_memory = in_memory
        self.memory_limit_gb = memory_limit_gb
        self.num_workers = num_workers
        self.seed = seed
        self.transform_from = transform_from
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
        if self.transform_from is not None:
            mean, std = self._reference_statistics()
        self.transform = ImageTransform(
            grayscale=self.geometry.grayscale, crop=self.geometry.crop, resize=self.geometry.resize, mean=mean, std=std
        )
        if in_memory:
            for s in sessions:
                # geometry was already applied while computing statistics; only z-score here, in place
                # (as `transform.from_pixels`, without two temporary copies of the session's images)
                self.tables[s].images.sub_(self.transform.mean).div_(self.transform.std)
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
                    for index in torch.from_numpy(train).split(STATISTICS_CHUNK):  # float64 copies of a chunk, not the tier
                        x = pixels[index].double()
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

    # ---- what models need to build themselves ---------------------------------------------------
    @functools.cached_property
    def twin(self) -> Twin | None:
        """The data file's ground truth (a synthetic twin), resolved once, or None for recorded data."""
        from encoders.twin import Twin

        return Twin.from_file(self.path)

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
    def _loader(self, tier: str, batch_size: int, shuffle: bool) -> SessionLoader:
        dataset = TierDataset(self.images, tier)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # training drops a rank's extra batches (an epoch is a little shorter), evaluation pads
        # instead (the model drops repeated images), so every rank runs the same number of steps
        sampler = SessionBatchSampler(
            dataset.groups(), batch_size, shuffle, self.seed, rank, world, balance="drop" if shuffle else "pad",
        )
        if not shuffle or trainer is None:
            return SessionLoader(dataset, sampler, self.num_workers, self.seed)
        fit_loop = trainer.fit_loop
        return ResumableSessionLoader(
            dataset, sampler, self.num_workers, self.seed,
            # the epoch Lightning itself passes to set_epoch, and the batches of it processed so far
            epoch=lambda: fit_loop.epoch_progress.current.processed,
            done=lambda: fit_loop.epoch_loop.batch_progress.current.processed,
        )

    def train_dataloader(self) -> SessionLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> SessionLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> SessionLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> SessionLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
