"""The real Cowley et al. 2023 V4 release converts completely and exactly."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from encoders.datasets.cowley2023 import split_tiers
from encoders.datasets.io import list_sessions, read_arrays, read_session
from encoders.datasets.summary import summarise

EXPECTED = {"190925": (36, 1200), "190927": (31, 1200), "190928": (24, 1200), "190929": (33, 1200),
            "210224": (67, 800), "210305": (70, 400), "210322": (59, 1200), "210325": (50, 640), "210621": (51, 1200)}


def test_all_sessions_counts(cowley_h5):
    rows = {r["session"]: r for r in summarise(cowley_h5)}
    assert list_sessions(cowley_h5) == sorted(EXPECTED)
    assert {s: (r["neurons"], r["images"]) for s, r in rows.items()} == EXPECTED
    assert sum(r["neurons"] for r in rows.values()) == 421
    assert sum(r["images"] for r in rows.values()) == 9040
    for r in rows.values():  # 10% test, 10% validation, rest train
        assert r["test"] == round(0.1 * r["images"]) and r["validation"] == round(0.1 * r["images"])
        assert r["image_shape"] == (3, 112, 112)
    assert rows["210325"]["repeats"] == 10 and rows["190925"]["repeats"] == 0


def test_known_values_survive_exactly(cowley_h5, cowley_source):
    source = np.load(cowley_source / "responses_repeat_averaged" / "responses_190925.npy")
    stored = read_arrays(cowley_h5, "190925", ["responses", "image_id", "neuron_id"])
    assert stored["responses"].dtype == np.float64
    np.testing.assert_array_equal(stored["responses"], source.T)  # exact, not approximately
    assert stored["responses"][0, 0] == 7.5 and stored["responses"][1, 0] == source[0, 1]
    assert stored["image_id"][0] == 1 and stored["neuron_id"][3] == "190925-003"

    raw = np.load(cowley_source / "responses_raw" / "responses_210325.npy")
    trials = read_arrays(cowley_h5, "210325", ["trials"])["trials"]
    assert trials.shape == (640, 10, 50)
    np.testing.assert_array_equal(np.isnan(trials), np.isnan(raw.transpose(1, 2, 0)))
    np.testing.assert_array_equal(np.nan_to_num(trials), np.nan_to_num(raw.transpose(1, 2, 0)))

    session = read_session(cowley_h5, "210305")
    with zipfile.ZipFile(cowley_source / "images" / "images_210305.zip") as z:
        pixels = np.asarray(Image.open(io.BytesIO(z.read("image0400.jpg"))).convert("RGB"))
    np.testing.assert_array_equal(session.images[399], pixels.transpose(2, 0, 1))
    assert session.attrs["animal"] == "PE"


def test_split_is_deterministic_and_documented():
    a = split_tiers(1200, "190925", 0.1, 0.1, seed=0)
    assert (a == split_tiers(1200, "190925", 0.1, 0.1, seed=0)).all()
    assert not (a == split_tiers(1200, "190927", 0.1, 0.1, seed=0)).all()  # each session its own permutation
    assert (a == "test").sum() == 120 and (a == "validation").sum() == 120
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_tiers(100, "x", 0.5, 0.5, seed=0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "encoders.cli", *args], capture_output=True, text=True)


def test_cli_converts_selected_sessions(tmp_path, cowley_source):
    out = tmp_path / "two.h5"
    result = _cli("prepare", "cowley2023", str(cowley_source), str(out), "--sessions", "[210305, 210325]")
    assert result.returncode == 0, result.stderr
    assert list_sessions(out) == ["210305", "210325"]
    assert "210325" in result.stdout and "total" in result.stdout


def test_cli_bad_source_fails_cleanly(tmp_path, cowley_source):
    source = tmp_path / "source"
    shutil.copytree(cowley_source, source)
    bad = np.load(source / "responses_repeat_averaged" / "responses_210305.npy")
    bad[4, 7] = np.nan
    np.save(source / "responses_repeat_averaged" / "responses_210305.npy", bad)
    out = tmp_path / "out" / "v4.h5"
    result = _cli("prepare", "cowley2023", str(source), str(out))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "v4.h5" in result.stderr and "session '210305'" in result.stderr and "field 'responses'" in result.stderr
    assert not out.exists() and not out.parent.exists()  # not even the folder it would have made

    result = _cli("prepare", "cowley2023", str(source), str(out), "--sessions", "999999")
    assert result.returncode == 2 and "999999" in result.stderr and "Traceback" not in result.stderr
    (source / "images" / "images_190925.zip").write_bytes(b"truncated")
    result = _cli("prepare", "cowley2023", str(source), str(out), "--sessions", "190925")
    assert result.returncode == 2 and "images_190925.zip" in result.stderr and "not a readable zip file" in result.stderr
    assert not out.parent.exists()
