"""Every bad input named in the datasets issue gives one clear error naming file, session and field,
and leaves no output behind — both when writing data and when opening a file."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from encoders.datasets.io import read_session, write_dataset
from encoders.datasets.validation import validate_file
from encoders.errors import DatasetError, EncodersError


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


# data that passes the schema but cannot train
def _no_images(s):
    s.images, s.image_ids, s.responses, s.tiers, s.trials = (a[:0] for a in (s.images, s.image_ids, s.responses, s.tiers, s.trials))


def _zero_width(s):
    s.images = s.images[:, :, :0]


def _zero_channels(s):
    s.images = np.zeros((s.n_images, 0, 16, 16), dtype=np.uint8)


def _constant_images(s):
    s.images[:] = 7


def _constant_float_images(s):
    s.images = np.full(s.images.shape, 0.25, dtype=np.float32)


def _nan_float_images(s):
    s.images = s.images.astype(np.float32)
    s.images[5, 2, 3] = np.nan


def _inf_float16_images(s):
    s.images = s.images.astype(np.float16)
    s.images[9, 0, 0] = np.inf


def _float64_images(s):
    s.images = s.images.astype(np.float64)


def _float32_overflow_responses(s):
    s.responses = s.responses.astype(np.float64)
    s.responses[2, 1] = 1e39  # finite in float64, inf in float32


def _float32_overflow_trials(s):
    s.trials = s.trials.astype(np.float64)
    s.trials[4, 0, 2] = 2e39


CASES = [
    (_break_count, "responses", "has 59 images but images has 60"),
    (_break_trials_count, "trials", "does not match"),
    (_nan_responses, "responses", "NaN or inf"),
    (_inf_responses, "responses", "NaN or inf"),
    (_negative_responses, "responses", "negative values but spike_counts is declared"),
    (_negative_trials, "trials", "negative values"),
    (_image_dtype, "images", "dtype must be uint8, float16 or float32, got int32"),
    (_image_rank, "images", "rank 3"),
    (_empty_tier, "tier", "tier 'validation' is empty"),
    (_unknown_tier, "tier", "unknown tier"),
    (_duplicate_ids, "image_id", "duplicate ids"),
    (_duplicate_neurons, "neuron_id", "duplicate ids"),
    (_no_images, "images", "the session has no images (shape (0, 16, 16))"),
    (_zero_width, "images", "images are zero-sized (shape (60, 16, 0)); height and width must each be at least 1"),
    (_zero_channels, "images", "images are zero-sized (shape (60, 0, 16, 16)); channels, height and width must each be at least 1"),
    (_constant_images, "images", "all 60 images are constant (every pixel is 7): zero pixel standard deviation"),
    (_constant_float_images, "images", "all 60 images are constant (every pixel is 0.25)"),
    (_nan_float_images, "images", "contains NaN or inf pixel values (first in image index 5 of 60)"),
    (_inf_float16_images, "images", "contains NaN or inf pixel values (first in image index 9 of 60)"),
    (_float64_images, "images", "dtype must be uint8, float16 or float32, got float64"),
    (_float32_overflow_responses, "responses", "contains 1 values that are not finite in float32, the dtype training uses (largest magnitude 1e+39"),
    (_float32_overflow_trials, "trials", "contains 1 values that are not finite in float32, the dtype training uses (largest magnitude 2e+39"),
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
    assert isinstance(info.value, EncodersError) and "\n" not in message, message  # one line for the CLI
    assert str(out) in message and "session 'bad'" in message and f"field {field!r}" in message, message
    assert words in message, message
    assert list(tmp_path.iterdir()) == [], "a failed write left files behind"


def test_negative_values_allowed_when_not_spike_counts(tmp_path, session_factory):
    s = session_factory("dff")
    s.attrs["spike_counts"] = 0  # e.g. calcium dF/F can be negative
    s.responses[0, 0] = -0.5
    write_dataset(tmp_path / "ok.h5", [s])
    assert validate_file(tmp_path / "ok.h5") == ["dff"]


def test_images_constant_only_at_the_start_are_accepted(tmp_path, session_factory):
    """The block-wise scan must look past a constant first block (uint8 stops early only once pixels differ)."""
    s = session_factory("late")
    s.images[:] = 0
    s.images[-1, 3, 4] = 1  # the session's only other pixel value, in its last image
    write_dataset(tmp_path / "ok.h5", [s])
    assert validate_file(tmp_path / "ok.h5") == ["late"]


def test_float16_is_accepted_and_trains_as_float32(tmp_path, session_factory, one_thread):
    from encoders.datasets.datamodule import RecordedDataModule

    s = session_factory("half", channels=3)
    s.images = s.images.astype(np.float16)
    s.responses = s.responses.astype(np.float16)
    s.trials = s.trials.astype(np.float16)
    path = tmp_path / "half.h5"
    write_dataset(path, [s])
    assert validate_file(path) == ["half"]
    back = read_session(path, "half")
    assert back.images.dtype == back.responses.dtype == back.trials.dtype == np.float16
    np.testing.assert_array_equal(back.responses, s.responses)
    for in_memory in (True, False):
        dm = RecordedDataModule(str(path), batch_size=8, in_memory=in_memory)
        dm.setup()
        batch = next(iter(dm.train_dataloader()))
        assert batch["images"].dtype == batch["responses"].dtype == batch["trials"].dtype == torch.float32
        assert torch.isfinite(batch["images"]).all() and dm.transform.std > 1


def test_large_float64_responses_that_fit_float32_are_accepted(tmp_path, session_factory):
    s = session_factory("big")
    s.responses = s.responses.astype(np.float64)
    s.responses[2, 1] = 3e38  # below float32's largest value (3.4e38)
    write_dataset(tmp_path / "ok.h5", [s])
    assert validate_file(tmp_path / "ok.h5") == ["big"]


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


def _refusal(tmp_path, good_file, edit) -> str:
    """The message of validating a copy of the good file after `edit` (which must make it invalid)."""
    path = tmp_path / "edited.h5"
    shutil.copy(good_file, path)
    _edit(path, edit)
    with pytest.raises(DatasetError) as info:
        validate_file(path)
    return str(info.value)


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
    message = _refusal(tmp_path, good_file, edit)
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
    with pytest.raises(DatasetError, match=r"field 'images': dtype must be uint8, float16 or float32, got int16"):
        validate_file(path)


def _replace(name, data):
    def edit(f):
        del f[f"sessions/s0/{name}"]
        f["sessions/s0"].create_dataset(name, data=data)
    return edit


def _nan_pixel(f):
    images = f["sessions/s0/images"][()].astype(np.float32)
    images[7, 1, 1] = np.nan
    _replace("images", images)(f)


def _overflow_responses(f):
    responses = f["sessions/s0/responses"][()].astype(np.float64)
    responses[0, 0] = 1e39
    _replace("responses", responses)(f)


@pytest.mark.parametrize(
    "edit, words",
    [
        (_replace("images", np.zeros((0, 16, 16), np.uint8)), "field 'images': the session has no images"),
        (_replace("images", np.zeros((60, 0, 16), np.uint8)), "field 'images': images are zero-sized (shape (60, 0, 16))"),
        (lambda f: f["sessions/s0/images"].__setitem__(Ellipsis, 255), "field 'images': all 60 images are constant (every pixel is 255)"),
        (_nan_pixel, "field 'images': contains NaN or inf pixel values (first in image index 7 of 60)"),
        (_overflow_responses, "field 'responses': contains 1 values that are not finite in float32"),
    ],
    ids=["no_images", "zero_sized", "constant", "nan_pixel", "float32_overflow"],
)
def test_untrainable_file_is_refused_on_open(tmp_path, good_file, edit, words):
    message = _refusal(tmp_path, good_file, edit)
    assert "edited.h5" in message and "session 's0'" in message and words in message and "\n" not in message, message
