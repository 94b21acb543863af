"""Every bad input named in the datasets issue gives one clear error naming file, session and field,
and leaves no output behind — both when writing data and when opening a file."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from encoders.datasets.io import write_dataset
from encoders.datasets.validation import validate_file
from encoders.errors import DatasetError


# ---- writing: bad data in memory never becomes a file ------------------------------------------
def _break_count(s):
    s.responses = s.responses[:-1]


def _break_trials_count(s):
    s.trials = s.trials[:, :, :-1]


def _nan_responses(s):
    s.responses[3, 1] = np.nan


def _inf_responses(s):
    s.responses[3, 1] = np.inf


def _negative_responses(s):
    s.responses[0, 0] = -1.0


def _negative_trials(s):
    s.trials[0, 0, 0] = -2.0


def _image_dtype(s):
    s.images = s.images.astype(np.int32)


def _image_rank(s):
    s.images = s.images[:, 0]


def _empty_tier(s):
    s.tiers = np.where(s.tiers == "validation", "train", s.tiers)


def _unknown_tier(s):
    s.tiers = s.tiers.astype(object)
    s.tiers[0] = "holdout"


def _duplicate_ids(s):
    s.image_ids[5] = s.image_ids[4]


def _duplicate_neurons(s):
    s.neuron_ids[1] = s.neuron_ids[0]


CASES = [
    (_break_count, "responses", "has 59 images but images has 60"),
    (_break_trials_count, "trials", "does not match"),
    (_nan_responses, "responses", "NaN or inf"),
    (_inf_responses, "responses", "NaN or inf"),
    (_negative_responses, "responses", "negative values but spike_counts is declared"),
    (_negative_trials, "trials", "negative values"),
    (_image_dtype, "images", "dtype must be uint8 or float32"),
    (_image_rank, "images", "rank 3"),
    (_empty_tier, "tier", "tier 'validation' is empty"),
    (_unknown_tier, "tier", "unknown tier"),
    (_duplicate_ids, "image_id", "duplicate ids"),
    (_duplicate_neurons, "neuron_id", "duplicate ids"),
]


@pytest.mark.parametrize("corrupt, field, words", CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_bad_data_is_rejected_before_any_file_exists(tmp_path, session_factory, corrupt, field, words):
    good = session_factory("good")
    bad = session_factory("bad", seed=3)
    corrupt(bad)
    out = tmp_path / "out.h5"
    with pytest.raises(DatasetError) as info:
        write_dataset(out, [good, bad])
    message = str(info.value)
    assert str(out) in message and "session 'bad'" in message and f"field {field!r}" in message, message
    assert words in message, message
    assert list(tmp_path.iterdir()) == [], "a failed write left files behind"


def test_negative_values_allowed_when_not_spike_counts(tmp_path, session_factory):
    s = session_factory("dff")
    s.attrs["spike_counts"] = 0  # e.g. calcium dF/F can be negative
    s.responses[0, 0] = -0.5
    write_dataset(tmp_path / "ok.h5", [s])
    assert validate_file(tmp_path / "ok.h5") == ["dff"]


# ---- opening: broken files are named precisely ---------------------------------------------------
@pytest.fixture
def good_file(tmp_path, session_factory):
    path = tmp_path / "good.h5"
    write_dataset(path, [session_factory("s0")])
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.h5: file not found"):
        validate_file(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("not hdf5 at all")
    with pytest.raises(DatasetError, match="text.h5: not a readable HDF5 file"):
        validate_file(path)


def test_truncated_file(tmp_path, good_file):
    data = good_file.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cut.h5: not a readable HDF5 file"):
        validate_file(cut)


def _edit(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda f: f.attrs.__setitem__("schema_version", "9.9"), "schema_version", "unknown schema version '9.9'"),
        (lambda f: f.attrs.__delitem__("schema_version"), "schema_version", "missing root attribute"),
        (lambda f: f["sessions/s0"].__delitem__("responses"), "responses", "missing field"),
        (lambda f: f["sessions/s0"].__delitem__("tier"), "tier", "missing field"),
        (lambda f: f["sessions/s0/responses"].__setitem__((1, 1), np.nan), "responses", "NaN or inf"),
        (lambda f: f["sessions/s0/responses"].__setitem__((1, 1), -3.0), "responses", "negative"),
        (lambda f: f["sessions/s0/image_id"].__setitem__(1, 100), "image_id", "duplicate ids"),
        (lambda f: f["sessions/s0/tier"].__setitem__(slice(None), "train"), "tier", "is empty"),
    ],
    ids=["schema_version", "no_version", "missing_responses", "missing_tier", "nan", "negative", "duplicate_ids", "empty_tier"],
)
def test_corrupt_file_fields(tmp_path, good_file, edit, field, words):
    path = tmp_path / "edited.h5"
    shutil.copy(good_file, path)
    _edit(path, edit)
    with pytest.raises(DatasetError) as info:
        validate_file(path)
    message = str(info.value)
    assert "edited.h5" in message and f"field {field!r}" in message and words in message, message


def test_count_mismatch_on_disk(tmp_path, good_file):
    path = tmp_path / "edited.h5"
    shutil.copy(good_file, path)

    def shrink(f):
        data = f["sessions/s0/responses"][()]
        del f["sessions/s0/responses"]
        f["sessions/s0"].create_dataset("responses", data=data[:-2])

    _edit(path, shrink)
    with pytest.raises(DatasetError, match=r"session 's0', field 'responses': has 58 images but images has 60"):
        validate_file(path)


def test_wrong_dtype_on_disk(tmp_path, good_file):
    path = tmp_path / "edited.h5"
    shutil.copy(good_file, path)

    def retype(f):
        data = f["sessions/s0/images"][()]
        del f["sessions/s0/images"]
        f["sessions/s0"].create_dataset("images", data=data.astype(np.int16))

    _edit(path, retype)
    with pytest.raises(DatasetError, match=r"field 'images': dtype must be uint8 or float32, got int16"):
        validate_file(path)
