"""The `encoders` command: prepare synthetic (config file + flags), info, and clean user errors."""

from __future__ import annotations

import subprocess
import sys

from encoders.datasets.io import read_arrays
from encoders.datasets.summary import summarise


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "encoders.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_prepare_synthetic_from_config_with_flag_override(tmp_path):
    config = tmp_path / "twin.yaml"
    config.write_text("n_sessions: 2\nneurons_per_session: 5\nimages_per_session: 100\nimage_size: 24\nseed: 3\n"
                      "test_repeats: 4\n")
    out = tmp_path / "twin.h5"
    result = _cli("prepare", "synthetic", str(out), "--config", str(config), "--neurons_per_session", "6")
    assert result.returncode == 0, result.stderr
    rows = summarise(out)
    assert [r["session"] for r in rows] == ["twin0", "twin1"]
    assert [r["neurons"] for r in rows] == [6, 6]  # the flag wins over the config
    assert rows[0]["images"] == 100 and rows[0]["repeats"] == 4 and rows[0]["image_shape"] == (24, 24)
    index = read_arrays(out, "twin1", ["ground_truth_index"])["ground_truth_index"]
    assert index.tolist() == list(range(6, 12))

    info = _cli("info", str(out))
    assert info.returncode == 0 and "twin1" in info.stdout and "total" in info.stdout


def test_config_with_unknown_key_fails_before_any_output(tmp_path):
    config = tmp_path / "twin.yaml"
    config.write_text("n_sessions: 2\nneurones: 5\n")
    out = tmp_path / "twin.h5"
    result = _cli("prepare", "synthetic", str(out), "--config", str(config))
    assert result.returncode == 2
    assert "twin.yaml: unknown key(s) ['neurones']" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not out.exists()


def test_info_on_a_broken_file(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    result = _cli("info", str(bad))
    assert result.returncode == 2 and "broken.h5: not a readable HDF5 file" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _cli("info", str(tmp_path / "missing.h5"))
    assert missing.returncode == 2 and "missing.h5: file not found" in missing.stderr


def test_bad_argument_values_are_user_errors(tmp_path):
    out = tmp_path / "twin.h5"
    result = _cli("prepare", "synthetic", str(out), "--validation_fraction", "0.6", "--test_fraction", "0.6",
                  "--n_sessions", "1", "--neurons_per_session", "2", "--images_per_session", "50", "--image_size", "16")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "validation_fraction + test_fraction" in result.stderr, result.stderr
    assert not out.exists()
