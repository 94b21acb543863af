"""LightningDataModule over a dataset file (a `Recording`): every batch comes from one session, sessions interleaved.

The data themselves (tiers, images in model space, responses, the twin) are the `Recording`'s,
which products and everything else outside training read without Lightning; this module adds
the loaders.

Two paths, chosen by `in_memory` (or automatically by size):
- in memory: each session's images are preprocessed once into one float32 tensor; a batch is a
  single tensor index (no per-sample Python work);
- lazy: images stay on disk and each batch is one sorted h5py read plus preprocessing, so sessions
  larger than RAM work (responses, always small, are held in memory).
"""

from __future__ import annotations


from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from encoders.datasets.recording import Recording, SessionImages, SessionTable
from encoders.datasets.transforms import ImageTransform
from encoders.errors import DatasetError, EncodersError

if TYPE_CHECKING:
    from encoders.twin import Twin


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
        self.recording: Recording | None = None

    # ---- loading -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.recording is not None:
            return
        g = self.geometry
        self.recording = Recording(self.path, sessions=self.requested_sessions, grayscale=g.grayscale, crop=g.crop,
                                   resize=g.resize, normalize=self.normalize, in_memory=self.in_memory,
                                   memory_limit_gb=self.memory_limit_gb, transform_from=self.transform_from)

    # ---- the recording's, for Lightning-side code (products and models read the recording) -----------
    @property
    def tables(self) -> dict[str, SessionTable]:
        return self.recording.tables if self.recording is not None else {}

    @property
    def transform(self) -> ImageTransform | None:
        return self.recording.transform if self.recording is not None else None

    @property
    def images(self) -> SessionImages | None:
        return self.recording.images if self.recording is not None else None

    @property
    def twin(self) -> Twin | None:
        """The data file's ground truth (a synthetic twin), or None for recorded data."""
        self.setup()
        return self.recording.twin

    @property
    def sessions(self) -> list[str]:
        return self.recording.sessions if self.recording is not None else []

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of model-space images."""
        return self.recording.input_shape

    def raw_image_shape(self, session: str) -> tuple[int, ...]:
        return self.recording.raw_image_shape(session)

    def session_info(self) -> dict[str, dict]:
        return self.recording.session_info()

    def tier_data(self, session: str, tier: str) -> dict[str, torch.Tensor]:
        return self.recording.tier_data(session, tier)

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
