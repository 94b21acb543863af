"""The DataModule: session-pure interleaved batches, identical in-memory and lazy paths, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.datasets.datamodule import RecordedDataModule, SessionBatchSampler
from encoders.datasets.io import write_dataset
from encoders.datasets.transforms import ImageTransform
from encoders.errors import DatasetError


@pytest.fixture
def tiny_file(tmp_path, session_factory):
    path = tmp_path / "tiny.h5"
    write_dataset(path, [session_factory("a", n_images=70, channels=3, seed=1), session_factory("b", n_images=50, n_neurons=4, channels=3, seed=2)])
    return path


def _epoch(dm, epoch=0):
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_batches_are_session_pure_interleaved_and_cover_the_tier(tiny_file):
    dm = RecordedDataModule(str(tiny_file), batch_size=8, in_memory=True)
    dm.setup("fit")
    batches = _epoch(dm)
    sessions = [b["session"] for b in batches]
    assert set(sessions) == {"a", "b"}
    assert sessions != sorted(sessions), "sessions should be interleaved, not one after the other"
    for b in batches:
        assert b["responses"].shape[1] == (7 if b["session"] == "a" else 4)
        assert b["images"].shape[1:] == (1, 16, 16)
    seen = {s: torch.cat([b["image_index"] for b in batches if b["session"] == s]).sort().values for s in ("a", "b")}
    assert seen["a"].tolist() == np.flatnonzero(dm.tables["a"].tiers == "train").tolist()
    assert seen["b"].tolist() == np.flatnonzero(dm.tables["b"].tiers == "train").tolist()
    # responses travel with their images
    b = batches[0]
    np.testing.assert_array_equal(b["responses"], dm.tables[b["session"]].responses[b["image_index"]])


def test_order_depends_on_seed_and_epoch_only(tiny_file):
    dm = RecordedDataModule(str(tiny_file), batch_size=8, in_memory=True, seed=3)
    dm.setup("fit")
    first = [b["image_index"].tolist() for b in _epoch(dm, 0)]
    again = [b["image_index"].tolist() for b in _epoch(dm, 0)]
    other = [b["image_index"].tolist() for b in _epoch(dm, 1)]
    assert first == again and first != other


def test_lazy_path_equals_in_memory_path(tiny_file):
    memory = RecordedDataModule(str(tiny_file), batch_size=8, in_memory=True, resize=(12, 12), crop=(1, 1, 2, 2))
    lazy = RecordedDataModule(str(tiny_file), batch_size=8, in_memory=False, resize=(12, 12), crop=(1, 1, 2, 2))
    memory.setup("fit"), lazy.setup("fit")
    assert memory.tables["a"].images is not None and lazy.tables["a"].images is None
    assert memory.transform.mean == pytest.approx(lazy.transform.mean, rel=1e-9)
    for m, z in zip(_epoch(memory), _epoch(lazy)):
        assert m["session"] == z["session"]
        torch.testing.assert_close(m["images"], z["images"], rtol=0, atol=1e-5)
    assert memory.input_shape() == (1, 12, 12)


def test_normalisation_uses_training_tier(tiny_file):
    dm = RecordedDataModule(str(tiny_file), batch_size=8, in_memory=True)
    dm.setup("fit")
    train = torch.cat([dm.tier_data(s, "train")["images"] for s in ("a", "b")])
    assert train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train.std().item() == pytest.approx(1.0, abs=1e-3)
    test = dm.tier_data("a", "test")
    assert test["images"].shape == (14, 1, 16, 16) and test["trials"].shape == (14, 4, 7)  # 70 // 5
    # back to pixel space: the luminance of the stored colour images
    from encoders.datasets.io import read_session

    raw = read_session(tiny_file, "a").images[test["image_index"].numpy()].astype(np.float64)
    luminance = 0.299 * raw[:, 0] + 0.587 * raw[:, 1] + 0.114 * raw[:, 2]
    np.testing.assert_allclose(dm.transform.to_pixels(test["images"])[:, 0].numpy(), luminance, atol=1e-3)


def test_transform_geometry():
    t = ImageTransform(grayscale=False, crop=(2, 0, 0, 4), resize=(5, 6))
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    assert t.geometry(x).shape == (2, 3, 5, 6)
    assert ImageTransform(crop=(2, 0, 0, 4)).geometry(x[:, :1]).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="removes the whole"):
        ImageTransform(crop=(5, 5, 0, 0)).geometry(x)
    with pytest.raises(ValueError, match="std must be positive"):
        ImageTransform(std=0.0)
    assert ImageTransform.from_state(t.state()) == t


def test_sampler_shards_for_several_processes():
    groups = [np.arange(0, 30), np.arange(30, 50)]
    ranks = [list(SessionBatchSampler(groups, 4, True, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(SessionBatchSampler(groups, 4, True, world_size=2))
    flat = [i for r in ranks for batch in r for i in batch]
    assert len(flat) == len(set(flat)), "ranks must not share images"


def test_unknown_session_is_named(tiny_file):
    dm = RecordedDataModule(str(tiny_file), sessions=["a", "zz"])
    with pytest.raises(DatasetError, match=r"tiny.h5, field 'sessions': unknown session\(s\) \['zz'\]"):
        dm.setup("fit")


def test_one_epoch_over_cowley(cowley_h5):
    dm = RecordedDataModule(str(cowley_h5), batch_size=128, resize=(40, 40))
    dm.setup("fit")
    assert dm.sessions == sorted(dm.sessions) and len(dm.sessions) == 9
    n_images, sessions = 0, set()
    for batch in dm.train_dataloader():
        n_images += batch["images"].shape[0]
        sessions.add(batch["session"])
        assert torch.isfinite(batch["images"]).all()
    assert n_images == 7232 and len(sessions) == 9
    info = dm.session_info()
    assert sum(len(v["neuron_ids"]) for v in info.values()) == 421
    assert next(iter(dm.test_dataloader()))["images"].shape[1:] == (1, 40, 40)


def test_each_epoch_of_a_fit_has_its_own_order(tiny_file):
    """Under a Trainer the loader reads the epoch from the trainer (Lightning never calls set_epoch on
    a batch sampler), so epoch e gets exactly SessionBatchSampler's order for (seed, e)."""
    import pytorch_lightning as pl

    from encoders.training import EncodingModel

    class Record(pl.Callback):
        def __init__(self):
            self.epochs: dict[int, list[list[int]]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.epochs.setdefault(trainer.current_epoch, []).append(batch["image_index"].tolist())

    dm = RecordedDataModule(str(tiny_file), batch_size=8, seed=5)
    model = EncodingModel(core={"type": "stacked", "hidden_channels": 2, "layers": 1, "input_kernel": 3, "hidden_kernel": 3},
                          readout={"type": "gaussian"})
    record = Record()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[record], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert record.epochs[0] != record.epochs[1]
    alone = RecordedDataModule(str(tiny_file), batch_size=8, seed=5)  # no trainer: set_epoch by hand
    alone.setup("fit")
    for epoch in (0, 1):
        expected = _epoch(alone, epoch)
        assert record.epochs[epoch] == [b["image_index"].tolist() for b in expected]


def test_resuming_mid_epoch_skips_the_batches_done_and_refuses_other_batches(tiny_file):
    from encoders.datasets.datamodule import ResumableSessionLoader, TierDataset

    dm = RecordedDataModule(str(tiny_file), batch_size=8, in_memory=True)
    dm.setup("fit")
    dataset = TierDataset(dm.images, "train")

    def loader(world_size=1):
        sampler = SessionBatchSampler(dataset.groups(), 8, True, seed=0, world_size=world_size)
        return ResumableSessionLoader(dataset, sampler, 0, 0, epoch=lambda: 3, done=lambda: 4)

    full = [b["image_index"].tolist() for b in loader()]
    state = loader().state_dict()
    assert state["epoch"] == 3 and state["batches_done"] == 4 and state["batches"] == len(full)
    resumed = loader()
    resumed.load_state_dict(state)
    assert [b["image_index"].tolist() for b in resumed] == full[4:]
    assert len(resumed) == len(full)  # Lightning counts the epoch's batches from the full length
    assert [b["image_index"].tolist() for b in resumed] == full  # only the first pass after a resume skips

    with pytest.raises(DatasetError, match=r"cannot resume mid-epoch: the training batches changed .*'world_size': \(1, 2\)"):
        loader(world_size=2).load_state_dict(state)


def test_numeric_session_ids_from_yaml_or_flags_are_strings(cowley_h5):
    """`--data.sessions '[210305]'` reads a number: the data module takes it as the session id it names."""
    from encoders.datasets.datamodule import RecordedDataModule

    datamodule = RecordedDataModule(str(cowley_h5), sessions=[210305], resize=(20, 20))
    datamodule.setup("fit")
    assert datamodule.sessions == ["210305"]
