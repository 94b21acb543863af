"""The on-disk format: round trips, labelled lazy views, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from encoders.datasets.io import list_sessions, open_session, read_ground_truth, read_session, root_attrs, write_dataset
from encoders.datasets.schema import SCHEMA_VERSION


def test_round_trip_keeps_every_field(tmp_path, session_factory):
    sessions = [session_factory("a", seed=1), session_factory("b", n_images=40, n_neurons=3, channels=3, trials=False, seed=2)]
    path = tmp_path / "d.h5"
    assert write_dataset(path, sessions, attrs={"title": "t"}, ground_truth={"w": np.arange(6.0).reshape(2, 3)}) == ["a", "b"]
    assert list_sessions(path) == ["a", "b"]
    for original in sessions:
        back = read_session(path, original.session_id)
        np.testing.assert_array_equal(back.images, original.images)
        assert back.images.dtype == np.uint8
        np.testing.assert_array_equal(back.image_ids, original.image_ids)
        np.testing.assert_array_equal(back.responses, original.responses)
        np.testing.assert_array_equal(back.tiers, original.tiers)
        np.testing.assert_array_equal(back.neuron_ids, original.neuron_ids)
        if original.trials is None:
            assert back.trials is None
        else:
            np.testing.assert_array_equal(np.isnan(back.trials), np.isnan(original.trials))
            np.testing.assert_array_equal(np.nan_to_num(back.trials), np.nan_to_num(original.trials))
        np.testing.assert_array_equal(back.neuron_meta["depth_um"], original.neuron_meta["depth_um"])
        assert back.attrs["animal"] == "test"
    assert root_attrs(path)["schema_version"] == SCHEMA_VERSION
    np.testing.assert_array_equal(read_ground_truth(path)["w"], np.arange(6.0).reshape(2, 3))


def test_open_session_is_labelled_and_lazy(tmp_path, session_factory):
    path = tmp_path / "d.h5"
    write_dataset(path, [session_factory("a", channels=3)])
    ds = open_session(path, "a")
    assert isinstance(ds, xr.Dataset)
    assert ds.images.dims == ("image", "channel", "y", "x")
    assert ds.responses.dims == ("image", "neuron")
    assert ds.trials.dims == ("image", "repeat", "neuron")
    # coordinates label images and neurons; the big arrays are not loaded until asked for
    assert not ds.images.variable._in_memory
    test = ds.where(ds.tier == "test", drop=True)
    assert test.sizes["image"] == 12
    assert ds.neuron_id.values[2] == "a-n2"
    assert int(ds.image_id[0]) == 100
    ds.close()


def test_written_file_is_plain_hdf5(tmp_path, session_factory):
    import h5py

    path = tmp_path / "d.h5"
    write_dataset(path, [session_factory("a")])
    with h5py.File(path, "r") as f:
        assert f["sessions/a/responses"].shape == (60, 7)
        assert f["sessions/a/tier"].asstr()[0] == "test"


def test_failed_write_leaves_nothing(tmp_path, session_factory):
    bad = session_factory("b")
    bad.responses[0, 0] = np.nan
    path = tmp_path / "out.h5"
    with pytest.raises(ValueError):
        write_dataset(path, [session_factory("a"), bad])
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path, session_factory):
    path = tmp_path / "out.h5"
    write_dataset(path, [session_factory("a")])
    before = path.read_bytes()
    bad = session_factory("a")
    bad.tiers[:] = "train"
    with pytest.raises(ValueError):
        write_dataset(path, [bad])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
