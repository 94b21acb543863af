"""`encoders prepare nwb`: small real NWB files written with pynwb, counts checked against hand-placed spikes.

The counting window of a presentation at onset t is [t + latency, t + latency + duration): a spike exactly
on its start counts, one exactly on its end does not.
"""

from __future__ import annotations

import datetime
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

pynwb = pytest.importorskip("pynwb")
from pynwb.base import ImageReferences, Images  # noqa: E402
from pynwb.image import GrayscaleImage, IndexSeries, OpticalSeries, RGBImage  # noqa: E402

from encoders.cli import main  # noqa: E402
from encoders.datasets.image_files import ImageSource  # noqa: E402
from encoders.datasets.io import list_sessions, read_session  # noqa: E402
from encoders.datasets.nwb import PYNWB_MISSING, convert_nwb, import_pynwb  # noqa: E402
from encoders.errors import EncodersError  # noqa: E402

LATENCY, DURATION = 0.05, 0.1
nan = np.nan
# Layout with images in the file: images 0..2 by hand, then 10 images shown once with no spikes.
SHOWN = [2, 0, 1, 0, 2, 0] + list(range(3, 13))
ONSETS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] + [10.0 + i for i in range(10)]


def start(t: float) -> float:
    return t + LATENCY  # the importer's own arithmetic, so edge spikes sit exactly on the edges


def end(t: float) -> float:
    return t + LATENCY + DURATION


# spikes per unit; the comments give the count per presentation (onsets 1..6)
SPIKES = [
    [start(1.0), end(1.0), 2.1, 2.12, 4.149, 6.0, 0.5],  # 1 (start in, end out), 2, 0, 1, 0, 0 (6.0 early); unsorted
    [3.06, 3.07, 3.08, start(5.0), end(5.0)],  # 0, 0, 3, 0, 1 (start edge), 0
    [6.1],  # 0, 0, 0, 0, 0, 1
]
COUNTS = np.array([[1, 2, 0, 1, 0, 0], [0, 0, 3, 0, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=float).T  # (presentation, unit)


def write_nwb(path, template=None, index=None, timestamps=None, optical=None, trials=None, units=None,
              unit_columns=None):
    """A small NWB file: Images + IndexSeries, or an OpticalSeries, or a trials table; Units with columns."""
    nwbfile = pynwb.NWBFile(session_description="test session", identifier=f"id-{path.stem}", session_id="ses-7",
                            session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    if template is not None:
        kind = RGBImage if template[0].ndim == 3 else GrayscaleImage
        pictures = [kind(name=f"image{i}", data=pixels, description="stimulus") for i, pixels in enumerate(template)]
        images = Images(name="stimuli", images=pictures, description="stimuli",
                        order_of_images=ImageReferences(name="order_of_images", data=pictures))
        nwbfile.add_stimulus_template(images)
        nwbfile.add_stimulus(IndexSeries(name="presentations", data=np.asarray(index, dtype=np.uint32),
                                         indexed_images=images, timestamps=np.asarray(timestamps, float), unit="N/A"))
    if optical is not None:
        frames, times = optical
        nwbfile.add_stimulus(OpticalSeries(name="movie", data=frames, timestamps=np.asarray(times, float), unit="n.a.",
                                           distance=0.5, field_of_view=[0.2, 0.2], orientation="upright"))
    if trials is not None:
        for name in trials:
            if name not in ("start_time", "stop_time"):
                nwbfile.add_trial_column(name=name, description=name)
        for row in zip(*trials.values()):
            nwbfile.add_trial(**dict(zip(trials, row)))
    if units is not None:
        unit_columns = unit_columns or {}
        for name in unit_columns:
            nwbfile.add_unit_column(name=name, description=name)
        for i, spikes in enumerate(units):
            nwbfile.add_unit(spike_times=spikes, **{name: values[i] for name, values in unit_columns.items()})
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def template_images(n: int = 13) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def template_nwb(tmp_path_factory):
    return write_nwb(tmp_path_factory.mktemp("nwb") / "sub-1_ses-7.nwb", template=template_images(), index=SHOWN,
                     timestamps=ONSETS, units=SPIKES, unit_columns={"quality": ["good", "good", "mua"]})


def test_template_layout_counts_repeats_and_split(template_nwb, tmp_path):
    out = tmp_path / "out.h5"
    assert convert_nwb(str(template_nwb), str(out), latency=LATENCY, duration=DURATION) == ["sub-1_ses-7"]
    s = read_session(out, "sub-1_ses-7")
    np.testing.assert_array_equal(s.image_ids, np.arange(13))
    np.testing.assert_array_equal(s.images, np.stack(template_images()).transpose(0, 3, 1, 2))
    assert list(s.neuron_ids) == ["0", "1", "2"] and list(s.neuron_meta["unit_id"]) == [0, 1, 2]
    # trials (image, repeat, unit): repeats in onset order; image 0 at onsets 2, 4, 6; image 1 at 3; image 2 at 1, 5
    expected = np.full((13, 3, 3), nan)
    expected[0] = COUNTS[[1, 3, 5]]
    expected[1, 0] = COUNTS[2]
    expected[2, :2] = COUNTS[[0, 4]]
    expected[3:, 0] = 0
    np.testing.assert_array_equal(s.trials, expected)
    np.testing.assert_allclose(s.responses[:3], [[1, 0, 1 / 3], [0, 3, 0], [0.5, 0.5, 0]])
    assert s.tiers[0] == s.tiers[2] == "test"  # repeated images are the test tier
    assert (s.tiers == "train").sum() == 9 and "repeats_to_test=True" in s.attrs["split"]  # 11 once-shown: 1, 1, 9
    assert s.attrs["units"] == "spike counts in [0.05, 0.15) s after presentations timestamps"
    assert s.attrs["spike_counts"] == 1 and s.attrs["nwb_session_id"] == "ses-7"
    assert "sub-1_ses-7.nwb" in s.attrs["provenance"] and "id-sub-1_ses-7" in s.attrs["provenance"]


def test_unit_filter_keeps_matching_units(template_nwb, tmp_path):
    out = tmp_path / "mua.h5"
    convert_nwb(str(template_nwb), str(out), latency=LATENCY, duration=DURATION, unit_filter="quality != 'good'")
    s = read_session(out, "sub-1_ses-7")
    assert list(s.neuron_ids) == ["2"]
    np.testing.assert_array_equal(s.trials[0, :, 0], COUNTS[[1, 3, 5], 2])


@pytest.fixture
def trials_layout(tmp_path):
    """No images in the file: trials columns stimulus_id and photodiode; PNG files img_<id>.png in a folder."""
    folder = tmp_path / "stimuli"
    folder.mkdir()
    rng = np.random.default_rng(1)
    ids = [7, 9, 12] + list(range(20, 30))
    for i in ids + [99]:  # 99 is never shown
        Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)).save(folder / f"img_{i:04d}.png")
    shown = [9, 7, 9, 12, 7] + list(range(20, 30))
    starts = [1.0, 2.0, 3.0, 4.0, 5.0] + [10.0 + i for i in range(10)]
    photodiode = [t + 0.02 for t in starts]
    trials = {"start_time": starts, "stop_time": [t + 0.5 for t in starts], "stimulus_id": shown, "photodiode": photodiode,
              "stimulus_name": [f"img_{i:04d}.png" for i in shown]}
    spikes = [
        [start(photodiode[0]), end(photodiode[0]), start(2.0)],  # 1 at the photodiode's start edge; start(2.0) is before it
        [start(photodiode[3]) + 0.01, start(photodiode[4])],  # presentation 3 and 4
        [3.1],
    ]
    path = write_nwb(tmp_path / "sub-2_ses-1.nwb", trials=trials, units=spikes,
                     unit_columns={"is_good": [True, True, False], "label": ["a", "b", "c"]})
    return path, folder


def test_trials_column_with_image_folder(trials_layout, tmp_path):
    path, folder = trials_layout
    out = tmp_path / "folder.h5"
    convert_nwb(str(path), str(out), images=ImageSource(folder=str(folder), pattern=r"img_(\d+)"),
                stimulus_column="stimulus_id", onset="photodiode", latency=LATENCY, duration=DURATION,
                unit_filter="is_good", neuron_id_column="label")
    s = read_session(out, "sub-2_ses-1")
    np.testing.assert_array_equal(s.image_ids, [7, 9, 12] + list(range(20, 30)))  # 99 never shown: not stored
    np.testing.assert_array_equal(s.images[0], np.asarray(Image.open(folder / "img_0007.png")))
    assert list(s.neuron_ids) == ["a", "b"] and s.trials.shape == (13, 2, 2)
    np.testing.assert_array_equal(s.trials[1, :, 0], [1, 0])  # image 9: presentations 0 and 2
    np.testing.assert_array_equal(s.trials[0, :, 0], [0, 0])  # start(2.0) lies before presentation 1's photodiode window
    np.testing.assert_array_equal(s.trials[0, :, 1], [0, 1])  # image 7: presentations 1 then 4
    np.testing.assert_array_equal(s.trials[2, :, 1], [1, nan])  # image 12: presentation 3 only
    assert s.responses[3:].sum() == 0 and s.attrs["units"] == "spike counts in [0.05, 0.15) s after photodiode"
    # ids given as names: the image pattern finds them
    convert_nwb(str(path), str(tmp_path / "names.h5"), images=ImageSource(folder=str(folder), pattern=r"img_(\d+)"),
                stimulus_column="stimulus_name", onset="photodiode", latency=LATENCY, duration=DURATION)
    np.testing.assert_array_equal(read_session(tmp_path / "names.h5", "sub-2_ses-1").trials[:, :, :2], s.trials)


def test_optical_series_and_several_files(template_nwb, tmp_path):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (12, 4, 4), dtype=np.uint8)
    order = [0, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1]
    optical = write_nwb(tmp_path / "movie.nwb", optical=(frames[order], np.arange(len(order), dtype=float)),
                        units=[[0.06, 2.06, 13.1]])
    out = tmp_path / "two.h5"
    assert convert_nwb([str(template_nwb), str(optical)], str(out), latency=LATENCY, duration=DURATION) == \
        ["sub-1_ses-7", "movie"]
    s = read_session(out, "movie")
    np.testing.assert_array_equal(s.images, frames)  # numbered by first appearance
    np.testing.assert_array_equal(s.trials[:3, :, 0], [[1, 1], [0, 1], [0, nan]])
    assert list_sessions(out) == ["movie", "sub-1_ses-7"]


def test_cli_end_to_end(template_nwb, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    config = tmp_path / "nwb.yaml"
    config.write_text(f"latency: {LATENCY}\nduration: {DURATION}\nsplit:\n  seed: 3\n")
    assert main(["prepare", "nwb", str(template_nwb), str(out), "--config", str(config),
                 "--unit_filter", "quality == good"]) == 0
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sub-1_ses-7" in printed
    s = read_session(out, "sub-1_ses-7")
    assert s.n_neurons == 2 and "seed=3" in s.attrs["split"]


# ---- bad input: one line naming the file, the session and the field; exit 2; nothing written
def bad(tmp_path, capsys, nwb, *options, words=()):
    out = tmp_path / "out" / "bad.h5"
    out.parent.mkdir(exist_ok=True)
    assert main(["prepare", "nwb", str(nwb), str(out), *map(str, options)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert list(out.parent.iterdir()) == []


def test_bad_no_units(tmp_path, capsys):
    path = write_nwb(tmp_path / "nounits.nwb", template=template_images(), index=SHOWN, timestamps=ONSETS)
    bad(tmp_path, capsys, path, words=("nounits.nwb", "session 'nounits'", "field 'units'"))


@pytest.mark.parametrize("duration", ["0", "-0.1"])
def test_bad_window(template_nwb, tmp_path, capsys, duration):
    bad(tmp_path, capsys, template_nwb, "--duration", duration,
        words=("sub-1_ses-7.nwb", "session 'sub-1_ses-7'", "field 'duration'"))


def test_bad_onset_column(trials_layout, tmp_path, capsys):
    path, folder = trials_layout
    bad(tmp_path, capsys, path, "--stimulus_column", "stimulus_id", "--images.folder", folder, "--onset", "photo",
        words=("sub-2_ses-1.nwb", "session 'sub-2_ses-1'", "field 'photo'"))


def test_bad_missing_image(trials_layout, tmp_path, capsys):
    path, folder = trials_layout
    (folder / "img_0012.png").unlink()
    bad(tmp_path, capsys, path, "--stimulus_column", "stimulus_id", "--images.folder", folder,
        words=("sub-2_ses-1.nwb", "session 'sub-2_ses-1'", "field 'stimulus_id'", "[12]"))


@pytest.mark.parametrize("kind", ["text", "hdf5"])
def test_bad_not_nwb(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.nwb"
    if kind == "text":
        path.write_text("not hdf5")
    else:
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    bad(tmp_path, capsys, path, words=(f"{kind}.nwb", f"session '{kind}'", "not a readable NWB file"))


def test_bad_unit_filter_column(template_nwb, tmp_path, capsys):
    bad(tmp_path, capsys, template_nwb, "--unit_filter", "depth > 3",
        words=("sub-1_ses-7.nwb", "session 'sub-1_ses-7'", "field 'depth'"))


def test_bad_no_presentations(tmp_path, capsys):
    path = write_nwb(tmp_path / "blank.nwb", template=template_images(2), index=[], timestamps=[], units=[[1.0]])
    bad(tmp_path, capsys, path, words=("blank.nwb", "session 'blank'", "field 'presentations'", ": no presentations"))


def test_bad_all_repeated_split_says_how(tmp_path, capsys):
    path = write_nwb(tmp_path / "rep.nwb", template=template_images(3), index=[0, 1, 2] * 2,
                     timestamps=np.arange(6.0), units=[[1.0]])
    bad(tmp_path, capsys, path, words=("rep.nwb", "field 'split'", "--split.repeats_to_test false"))


def test_missing_pynwb_message(template_nwb, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynwb", None)  # import pynwb now raises ImportError
    with pytest.raises(EncodersError) as error:
        import_pynwb()
    assert str(error.value) == PYNWB_MISSING == "prepare nwb needs pynwb: pip install 'encoders[nwb]'"
    bad(tmp_path, capsys, template_nwb, words=(PYNWB_MISSING,))
