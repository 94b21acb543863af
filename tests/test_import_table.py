"""`encoders prepare table`: a lab's own image files and response tables/arrays, imported and checked.

Real files are written here (PNG, JPEG, TIFF incl. 16-bit, zip, CSV, NPY, NPZ, parquet); expected
values are computed by hand. Bad inputs each give one line naming the file, session and field, exit 2,
and no output file. The Cowley et al. release imported through a YAML equals `prepare cowley2023`.
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from encoders.cli import main
from encoders.datasets.image_files import ImageSource, read_image_files, read_images
from encoders.datasets.io import list_sessions, read_session, root_attrs
from encoders.datasets.splits import SplitRule, assign_tiers, split_tiers

ROOT = Path(__file__).resolve().parents[1]
IDS = [3, 5, 8, 13, 21, 34, 55, 89, 144, 233]  # stimulus numbers in the file names, not 0..n-1


def _grey(i: int, size=(16, 20)) -> np.ndarray:
    return ((np.arange(size[0] * size[1]).reshape(size) * (i + 1)) % 251).astype(np.uint8)


def _write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def lab(tmp_path):
    """A session as a lab has it: a folder of PNGs, a per-trial CSV (images 3 and 5 shown three times,
    one value missing), a units table and an image table; returns (folder, config dict)."""
    (tmp_path / "stimuli").mkdir()
    for i in IDS:
        Image.fromarray(_grey(i)).save(tmp_path / "stimuli" / f"img_{i}.png")
    (tmp_path / "stimuli" / "notes.txt").write_text("not an image")
    rows = ["image_id,unit_a,unit_b,unit_c,note"]
    for i in IDS:
        rows.append(f"{i},{i % 7},{i % 3},1,x")
    rows += ["3,4,,2,again", "5,2,1,0,again", "3,1,5,3,again", "5,4,2,2,again"]
    (tmp_path / "day3_counts.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "day3_units.csv").write_text("unit,depth_um,area\nunit_c,300,V4\nunit_a,100,V4\nunit_b,200,V4\nunit_z,0,V1\n")
    (tmp_path / "day3_images.csv").write_text("image_id,category\n" + "\n".join(f"{i},{'odd' if i % 2 else 'even'}" for i in IDS) + "\n")
    config = {"title": "My V4 recordings", "sessions": [{
        "id": "m1",
        "images": {"folder": "stimuli", "pattern": r"img_(\d+)\.png", "bits": 8, "channels": 1},
        "responses": {"file": "day3_counts.csv", "layout": "per_trial", "image_column": "image_id",
                      "neurons": {"columns": "unit_.*"}, "units": "spike_counts", "window": "70-170 ms"},
        "neuron_meta": {"file": "day3_units.csv", "id_column": "unit"},
        "image_meta": {"file": "day3_images.csv", "id_column": "image_id"},
        "split": {"seed": 0, "test_fraction": 0.2, "validation_fraction": 0.2, "repeats_to_test": True},
        "attrs": {"animal": "m1"},
    }]}
    return tmp_path, config


def _prepare(capsys, config_path: Path, out: Path, *flags: str) -> tuple[int, str]:
    rc = main(["prepare", "table", str(config_path), str(out), *flags])
    return rc, capsys.readouterr().err


def test_per_trial_csv_with_png_folder(lab, capsys):
    folder, config = lab
    out = folder / "out" / "lab.h5"
    rc, err = _prepare(capsys, _write_yaml(folder / "import.yaml", config), out)
    assert rc == 0, err
    s = read_session(out, "m1")
    assert s.image_ids.tolist() == IDS and s.images.dtype == np.uint8 and s.images.shape == (10, 16, 20)
    np.testing.assert_array_equal(s.images[2], _grey(8))
    assert s.neuron_ids.tolist() == ["unit_a", "unit_b", "unit_c"]  # "note" is not a neuron column
    assert s.trials.shape == (10, 3, 3)
    # image 3: unit_a trials 3, 4, 1 -> 8/3; unit_b 0, (missing), 5 -> 2.5
    np.testing.assert_allclose(s.responses[0], [8 / 3, 2.5, 2.0])
    assert np.isnan(s.trials[0, 1, 1]) and s.trials[0, 2, 1] == 5
    np.testing.assert_allclose(s.responses[1], [(5 + 2 + 4) / 3, (2 + 1 + 2) / 3, 1.0])  # image 5
    np.testing.assert_array_equal(s.responses[4], [0, 0, 1])  # image 21, shown once
    assert np.isnan(s.trials[4, 1:]).all()
    assert s.tiers[0] == s.tiers[1] == "test"  # the repeated images go to test ...
    rest = split_tiers(8, "m1", validation_fraction=0.2, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(s.tiers[2:], rest)  # ... the others follow the seeded permutation
    np.testing.assert_array_equal(s.neuron_meta["depth_um"], [100, 200, 300])
    assert s.neuron_meta["area"].tolist() == ["V4"] * 3
    assert s.image_meta["category"].tolist() == ["odd" if i % 2 else "even" for i in IDS]
    assert s.attrs["units"] == "spike counts in a 70-170 ms window, averaged over repeats"
    assert s.attrs["spike_counts"] == 1 and s.attrs["animal"] == "m1" and "repeats_to_test=True (2 repeated" in s.attrs["split"]
    assert root_attrs(out)["title"] == "My V4 recordings"

    # paths are relative to `root`, itself relative to the YAML's folder; --root (relative to the cwd) overrides it
    (folder / "configs").mkdir()
    rc, err = _prepare(capsys, _write_yaml(folder / "configs" / "a.yaml", {**config, "root": ".."}), folder / "a.h5")
    assert rc == 0, err
    moved = _write_yaml(folder / "configs" / "b.yaml", {**config, "root": "elsewhere"})
    rc, err = _prepare(capsys, moved, folder / "b.h5", "--root", str(folder))
    assert rc == 0, err
    np.testing.assert_array_equal(read_session(folder / "b.h5", "m1").trials, s.trials)


def test_image_files_formats(tmp_path):
    # JPEG colour in a zip (sub-folder, macOS debris), one grey JPEG among them made colour by channels: 3
    photo = np.random.default_rng(0).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as z:
        for i in (1, 2):
            buffer = io.BytesIO()
            Image.fromarray(photo if i == 1 else photo[..., 0]).save(buffer, "JPEG")
            z.writestr(f"set/image{i:04d}.jpg", buffer.getvalue())
        z.writestr("__MACOSX/set/._image0001.jpg", b"junk")
    ids, images = read_images(ImageSource(zip="images.zip", pattern=r"image(\d+)\.jpg", channels=3), tmp_path)
    assert ids.tolist() == [1, 2] and images.shape == (2, 3, 12, 14) and images.dtype == np.uint8
    with zipfile.ZipFile(tmp_path / "images.zip") as z:
        first = np.asarray(Image.open(io.BytesIO(z.read("set/image0001.jpg"))))
        second = np.asarray(Image.open(io.BytesIO(z.read("set/image0002.jpg"))))
    np.testing.assert_array_equal(images[0], first.transpose(2, 0, 1))
    np.testing.assert_array_equal(images[1], np.stack([second] * 3))  # grey replicated

    # 16-bit grey TIFF and PNG: float32 0..255 (value / 257), exactly
    (tmp_path / "deep").mkdir()
    deep = (np.arange(8 * 10).reshape(8, 10) * 800).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep" / "s1.tif")
    Image.fromarray(deep[::-1].copy()).save(tmp_path / "deep" / "s2.png")
    ids, images = read_image_files(tmp_path / "deep", bits=16)
    assert ids.tolist() == [1, 2] and images.dtype == np.float32
    np.testing.assert_array_equal(images[0], deep.astype(np.float32) / 257)
    np.testing.assert_array_equal(images[1], deep[::-1].astype(np.float32) / 257)

    # mixed sizes: center_crop and resize to one size
    (tmp_path / "mixed").mkdir()
    big, small = _grey(1, (20, 24)), _grey(2, (10, 12))
    Image.fromarray(big).save(tmp_path / "mixed" / "1.png")
    Image.fromarray(small).save(tmp_path / "mixed" / "2.png")
    _, cropped = read_images(ImageSource(folder="mixed", size=(10, 12), fit="center_crop"), tmp_path)
    np.testing.assert_array_equal(cropped[0], big[5:15, 6:18])
    np.testing.assert_array_equal(cropped[1], small)
    _, resized = read_images(ImageSource(folder="mixed", size=(10, 12), fit="resize"), tmp_path)
    np.testing.assert_array_equal(resized[0], np.asarray(Image.fromarray(big).resize((12, 10), Image.Resampling.BILINEAR)))

    # an array file: (image, y, x, channel) uint8, made grey with channels: 1, ids = index + offset
    np.save(tmp_path / "stimuli.npy", np.stack([photo, photo[::-1]]))
    ids, grey = read_images(ImageSource(array="stimuli.npy", id_offset=100, channels=1), tmp_path)
    assert ids.tolist() == [100, 101] and grey.shape == (2, 12, 14) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[0], np.asarray(Image.fromarray(photo).convert("L")))


def test_arrays_npz_npy_and_rates(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "stimuli.npy", rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8))
    averaged = rng.random((4, 12)) * 20  # (neuron, image), rates in Hz
    trials = rng.random((4, 12, 3)) * 20  # (neuron, image, repeat)
    trials[:, :6, 2] = np.nan  # images 0..5 shown twice, 6..11 three times
    np.savez(tmp_path / "rates.npz", mean=averaged, raw=trials)
    dff = rng.normal(size=(12, 2, 5))  # (image, repeat, neuron), negative values allowed for dff
    dff[3:, 1] = np.nan  # images 0, 1, 2 shown twice: the test tier
    np.save(tmp_path / "dff.npy", dff)
    config = {"sessions": [
        {"id": 7, "images": {"array": "stimuli.npy", "axes": ["image", "channel", "y", "x"], "id_offset": 1},
         "responses": {"file": "rates.npz", "key": "mean", "axes": ["neuron", "image"], "units": "rates",
                       "image_id_offset": 1, "neurons": {"id_format": "cell{i}"}},
         "trials": {"file": "rates.npz", "key": "raw", "axes": ["neuron", "image", "repeat"], "image_id_offset": 1},
         "split": {"test_fraction": 0.25, "validation_fraction": 0.25, "repeats_to_test": False}},
        {"id": "imaging", "images": {"array": "stimuli.npy", "axes": ["image", "channel", "y", "x"]},
         "responses": {"file": "dff.npy", "units": "dff"}, "split": {"seed": 3}},
    ]}
    out = tmp_path / "arrays.h5"
    rc, err = _prepare(capsys, _write_yaml(tmp_path / "arrays.yaml", config), out)
    assert rc == 0, err
    assert list_sessions(out) == ["7", "imaging"]
    s = read_session(out, "7")
    assert s.image_ids.tolist() == list(range(1, 13)) and s.images.shape == (12, 3, 8, 8)
    np.testing.assert_array_equal(s.responses, averaged.T)
    np.testing.assert_array_equal(s.trials, trials.transpose(1, 2, 0))
    assert s.neuron_ids.tolist() == ["cell0", "cell1", "cell2", "cell3"] and s.neuron_meta["source_row"].tolist() == [0, 1, 2, 3]
    assert s.attrs["spike_counts"] == 0 and s.attrs["units"].startswith("firing rates (Hz)")
    np.testing.assert_array_equal(s.tiers, split_tiers(12, "7", 0.25, 0.25, seed=0))
    d = read_session(out, "imaging")
    np.testing.assert_allclose(d.responses[:3], dff[:3].mean(axis=1))
    np.testing.assert_array_equal(d.responses[3:], dff[3:, 0])
    assert (d.responses < 0).any() and d.trials.shape == (12, 2, 5) and d.neuron_ids[0] == "imaging-000"
    assert (d.tiers[:3] == "test").all() and (d.tiers[3:] == split_tiers(9, "imaging", 0.1, 0.1, seed=3)).all()
    assert d.attrs["spike_counts"] == 0 and d.attrs["units"] == "ΔF/F, averaged over repeats"


def test_parquet_per_image_with_tier_column(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.fromarray(np.stack([_grey(i)] * 3, axis=-1)).save(tmp_path / "img" / f"{i}.png")
    frame = pd.DataFrame({"stim": [5, 4, 3, 2, 1, 0], "n1": [1.0, 2, 3, 4, 5, 6], "n2": [0.5] * 6,
                          "tier": ["test", "train", "train", "validation", "train", "train"]})
    frame.to_parquet(tmp_path / "resp.parquet")
    config = {"sessions": [{"id": "p", "images": {"folder": "img"},
                            "responses": {"file": "resp.parquet", "image_column": "stim", "units": "spike_counts"},
                            "split": {"column": "tier"}}]}
    out = tmp_path / "p.h5"
    rc, err = _prepare(capsys, _write_yaml(tmp_path / "p.yaml", config), out)
    assert rc == 0, err
    s = read_session(out, "p")
    assert s.images.shape == (6, 3, 16, 20) and s.neuron_ids.tolist() == ["n1", "n2"]  # tier is not a neuron
    np.testing.assert_array_equal(s.responses[:, 0], [6, 5, 4, 3, 2, 1])  # rows in the images' id order
    assert s.tiers.tolist() == ["train", "train", "validation", "train", "train", "test"]
    assert s.attrs["split"] == "column 'tier'"


def test_split_rule():
    n_repeats = np.array([1, 4, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1])
    tiers, description = assign_tiers(SplitRule(seed=1, test_fraction=0.1, validation_fraction=0.2), "s", 12, n_repeats)
    assert tiers[1] == tiers[4] == "test" and "2 repeated images to test" in description
    np.testing.assert_array_equal(tiers[n_repeats == 1], split_tiers(10, "s", 0.2, 0.1, seed=1))
    only_repeats, _ = assign_tiers(SplitRule(test_fraction=0.0, validation_fraction=0.2), "s", 12, n_repeats)
    assert (only_repeats == "test").sum() == 2
    same, _ = assign_tiers(SplitRule(repeats_to_test=False), "s", 12, n_repeats)
    np.testing.assert_array_equal(same, split_tiers(12, "s", 0.1, 0.1, seed=0))
    with pytest.raises(ValueError, match="unknown tier"):
        assign_tiers(SplitRule(column="tier"), "s", 3, given=np.array(["train", "test", "tset"]))
    assert SplitRule(test_fraction=0.0, repeats_to_test=False).problem()[0] == "test_fraction"


def test_cowley_release_through_a_table_config(tmp_path, cowley_source):
    """The shipped experiments/import_cowley2023.yaml gives what `prepare cowley2023` gives (two sessions here)."""
    from encoders.datasets.cowley2023 import convert_cowley2023
    from encoders.datasets.table import import_table

    config = yaml.safe_load((ROOT / "experiments" / "import_cowley2023.yaml").read_text())
    assert len(config["sessions"]) == 9
    config["sessions"] = [s for s in config["sessions"] if s["id"] in ("210305", "210325")]
    import_table(str(_write_yaml(tmp_path / "two.yaml", config)), str(tmp_path / "table.h5"), root=str(cowley_source))
    convert_cowley2023(cowley_source, tmp_path / "cowley.h5", sessions=["210305", "210325"])
    for session in ("210305", "210325"):
        a, b = read_session(tmp_path / "cowley.h5", session), read_session(tmp_path / "table.h5", session)
        for name in ("images", "image_ids", "responses", "trials", "tiers", "neuron_ids"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None) and (x is None or x.dtype == y.dtype), name
            np.testing.assert_array_equal(x, y, err_msg=f"{session} {name}")
        np.testing.assert_array_equal(a.neuron_meta["source_row"], b.neuron_meta["source_row"])
        assert a.attrs["units"] == b.attrs["units"] and a.attrs["animal"] == b.attrs["animal"]
    assert read_session(tmp_path / "table.h5", "210325").trials.shape == (640, 10, 50)


def test_python_route_in_the_docs(tmp_path, monkeypatch):
    """The snippet in the README's "Your data" section runs as printed and writes a valid file."""
    text = (ROOT / "README.md").read_text().split("## Your data", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", text.split("### From Python", 1)[1], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    assert list_sessions(tmp_path / "my_v4.h5") == ["m1_day3"]


# ---- bad inputs: one line naming file, session and field; exit 2; no output -----------------------------
def _edit_csv(folder: Path, old: str, new: str) -> None:
    path = folder / "day3_counts.csv"
    path.write_text(path.read_text().replace(old, new, 1))


def _trials_array_too_short(folder: Path, config: dict) -> None:
    np.save(folder / "averaged.npy", np.ones((3, len(IDS))))
    np.save(folder / "raw.npy", np.ones((3, len(IDS) - 1, 2)))
    config["sessions"][0]["responses"] = {"file": "averaged.npy", "axes": ["neuron", "image"], "units": "spike_counts"}
    config["sessions"][0]["trials"] = {"file": "raw.npy", "axes": ["neuron", "image", "repeat"]}


def _save_16_bit(folder: Path, config: dict) -> None:
    Image.fromarray(_grey(5).astype(np.uint16) * 200).save(folder / "stimuli" / "img_5.png")


def _empty_folder(folder: Path, config: dict) -> None:
    (folder / "empty").mkdir()
    (folder / "empty" / "readme.md").write_text("nothing yet")
    config["sessions"][0]["images"]["folder"] = "empty"


BAD = {
    "image id without an image file": (
        lambda f, c: (f / "stimuli" / "img_8.png").unlink(),
        ["day3_counts.csv", "field 'image_id'", "no image file", "[8]"]),
    "image without responses": (
        lambda f, c: Image.fromarray(_grey(0)).save(f / "stimuli" / "img_999.png"),
        ["day3_counts.csv", "field 'image_id'", "no responses", "[999]"]),
    "neuron column not numeric": (
        lambda f, c: _edit_csv(f, "13,6,1,1", "13,6,lots,1"),
        ["day3_counts.csv", "field 'unit_b'", "not numeric", "'lots'"]),
    "negative spike counts": (
        lambda f, c: _edit_csv(f, "13,6,1,1", "13,-6,1,1"),
        ["day3_counts.csv", "field 'unit_a'", "negative", "spike_counts"]),
    "two images with one id": (
        lambda f, c: Image.fromarray(_grey(0)).save(f / "stimuli" / "img_08.png"),
        ["stimuli", "field 'images'", "image id 8 is given by two files", "img_8.png", "img_08.png"]),
    "trial array of another image count": (
        _trials_array_too_short, ["raw.npy", "field 'trials'", "9 images along its image axis", "10 images"]),
    "16-bit image declared 8-bit": (
        _save_16_bit, ["img_5.png", "field 'images'", "16-bit image but bits: 8"]),
    "corrupt image": (
        lambda f, c: (f / "stimuli" / "img_13.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
        ["img_13.png", "field 'images'", "not a readable image"]),
    "truncated image": (
        lambda f, c: (f / "stimuli" / "img_13.png").write_bytes((f / "stimuli" / "img_13.png").read_bytes()[:60]),
        ["img_13.png", "not a readable image"]),
    "empty folder": (_empty_folder, ["empty", "field 'images'", "no image files"]),
    "mixed sizes without fit": (
        lambda f, c: Image.fromarray(_grey(21, (16, 16))).save(f / "stimuli" / "img_21.png"),
        ["img_21.png", "16x16", "img_3.png is 16x20", "fit"]),
    "unknown key in a session": (
        lambda f, c: c["sessions"][0]["images"].update(bitz=16),
        ["import.yaml", "field 'images.bitz'", "unknown key"]),
    "unknown top-level key": (
        lambda f, c: c.update(titel="x"), ["import.yaml", "unknown key(s) ['titel']"]),
    "bad value": (
        lambda f, c: c["sessions"][0]["images"].update(bits=12), ["import.yaml", "field 'images.bits'", "Got value: 12"]),
    "unknown tier in the split column": (
        lambda f, c: c["sessions"][0].update(split={"column": "category"}),
        ["day3_images.csv", "field 'category'", "unknown tier(s) ['even', 'odd']"]),
    "missing responses file": (
        lambda f, c: (f / "day3_counts.csv").unlink(),
        ["import.yaml", "field 'responses.file'", "day3_counts.csv: file not found"]),
    "units not declared": (
        lambda f, c: c["sessions"][0]["responses"].pop("units"), ["import.yaml", "field 'responses.units'"]),
    "parquet without pyarrow": (
        lambda f, c: c["sessions"][0]["responses"].update(file="counts.parquet") or (f / "counts.parquet").write_bytes(b"PAR1"),
        ["field 'responses.file'", "pip install 'encoders[table]'"]),
    # the whole config is checked before any file is read: a corrupt image of session 1 is not reached
    "second session's file missing": (
        lambda f, c: ((f / "stimuli" / "img_13.png").write_bytes(b"junk"),
                      c["sessions"].append({**c["sessions"][0], "id": "m2", "responses": {"file": "nope.csv", "units": "rates"}})),
        ["import.yaml", "session 'm2'", "nope.csv: file not found"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(case, lab, capsys, monkeypatch):
    folder, config = lab
    if case == "parquet without pyarrow":
        monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails as when it is not installed
    change, expected = BAD[case]
    change(folder, config)
    out = folder / "out" / "lab.h5"
    rc, err = _prepare(capsys, _write_yaml(folder / "import.yaml", config), out)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    assert "session 'm" in err or case == "unknown top-level key"
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])
