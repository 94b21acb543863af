"""`encoders export`: rig stimuli from MEI products, with real parts: a tiny twin, a 1-epoch fit, GA MEIs
made by `encoders mei`, and the exported PNGs read back from disk.

Round-trip tolerance. An exported pixel is the exact rig-space value rounded to 8 bits, so it is off by at
most 0.5 pixel values (where nothing was clipped; the manifest counts clipped pixels and these tests assert
none were). The transform's crop only drops pixels and its resize (bilinear, antialiased) averages with
non-negative weights that sum to 1, so every model-space pixel of the re-read PNG is within 0.5 / std of the
product's image (z-scored units). A response then moves by at most that times the L1 norm of its gradient
(to first order; 0.5 / std is ~0.01 here, where the second order is negligible): the test's bound on each
neuron, 5% slack for the linearisation.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

import fit_runs
from conftest import make_session
from encoders.checkpoints import load_encoder
from encoders.cli import main as encoders_main
from encoders.datasets.io import write_dataset
from encoders.datasets.transforms import ImageTransform, resize_matrix
from encoders.export import read_stimulus

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]

TARGETS = "[twin0/twin0-n000, twin1/twin1-n003]"


def _encoders(*argv: object) -> int:
    return encoders_main([str(a) for a in argv])


def _mei(checkpoints: list[Path], out: Path, neurons: str = TARGETS, seeds: str = "[0, 1]") -> Path:
    assert _encoders("mei", *checkpoints, "--neurons", neurons, "--method.steps", 4, "--method.seeds", seeds,
                     "--out", out) == 0
    return out / "mei_ga.nc"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny twin, a checkpoint fitted on it for one epoch, another model (changed weights), their GA MEIs, one export."""
    trained = fit_runs.fit_tiny(tmp_path_factory.mktemp("export"))
    folder, data, last = trained["folder"], trained["data"], trained["checkpoint"]
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    for name, value in checkpoint["state_dict"].items():
        if name.startswith("encoder.core.") and value.is_floating_point() and value.ndim == 4:
            checkpoint["state_dict"][name] = value * 1.2  # another model
    other = folder / "other.ckpt"
    torch.save(checkpoint, other)
    product = _mei([last], folder / "products")
    ensemble_product = _mei([last, other], folder / "products_ensemble", neurons="[twin0/twin0-n001]", seeds="[0]")
    stimuli = folder / "stimuli"
    assert _encoders("export", last, "--data", data, "--products", product, "--out", stimuli, "--top_natural", 2,
                     "--random_natural", 3, "--seed", 0, "--seeds", "all") == 0
    return {"folder": folder, "data": data, "last": last, "other": other, "product": product,
            "ensemble_product": ensemble_product, "stimuli": stimuli}


def _manifest(folder: Path) -> tuple[list[dict], dict]:
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows, json.loads((folder / "manifest.json").read_text())


def _shape(data: Path, session: str) -> tuple[int, ...]:
    with h5py.File(data, "r") as f:
        return tuple(f[f"sessions/{session}/images"].shape[1:])


def _model_space(folder: Path, row: dict, data: Path, transform: ImageTransform) -> torch.Tensor:
    """An exported PNG read back from disk and passed through the checkpoint's transform, as the model sees it."""
    return transform(read_stimulus(folder / row["file"], _shape(data, row["session"]))[None])


def test_round_trip_png_gives_the_products_responses_within_8_bit_rounding(run):
    rows, _ = _manifest(run["stimuli"])
    model = load_encoder(run["last"])
    transform = model.image_transform
    with xr.open_dataset(run["product"], engine="h5netcdf") as product:
        product = product.load()
    meis = [row for row in rows if row["origin"] == "mei"]
    assert len(meis) == 2 * 2  # two neurons x two seeds (--seeds all)
    neurons = list(product["neuron_id"].values)
    for row in meis:
        assert row["clipped_pixels"] == "0"  # the bound below holds where nothing was clipped
        image = torch.as_tensor(product["image"].values[0, neurons.index(row["neuron"]), int(row["seed"])])[None]
        exported = _model_space(run["stimuli"], row, run["data"], transform)
        assert exported.shape == image.shape
        pixel_error = float((exported - image).abs().max()) * transform.std
        assert pixel_error <= 0.5 + 1e-3, pixel_error
        assert pixel_error > 0  # really rounded: the product's images are not 8-bit
        x = image.clone().requires_grad_(True)
        rates = model(x, row["session"])[0]
        bounds = torch.stack([torch.autograd.grad(rates[k], x, retain_graph=True)[0].abs().sum() for k in range(len(rates))])
        bounds = bounds * 0.5 / transform.std
        with torch.no_grad():
            difference = (model(exported, row["session"])[0] - rates).abs()
        assert torch.all(difference <= 1.05 * bounds + 1e-6), (difference, bounds)
        column = model.neuron_ids(row["session"]).index(row["neuron"])
        # and the target's response is the product's activation up to that bound
        activation = float(product["activation"].values[0, neurons.index(row["neuron"]), int(row["seed"])])
        assert abs(float(row[f"mean:{row['session']}/{row['neuron']}"]) - activation) <= 1.05 * float(bounds[column]) + 1e-5


def test_manifest_predictions_are_the_models_on_the_reread_pngs(run):
    rows, manifest = _manifest(run["stimuli"])
    model = load_encoder(run["last"])
    assert manifest["checkpoints"] == [str(run["last"])] and len(rows) == len(manifest["stimuli"])
    for row in rows:
        x = _model_space(run["stimuli"], row, run["data"], model.image_transform)
        with torch.no_grad():
            rates = model(x, row["session"])[0].double().numpy()
        for k, neuron in enumerate(model.neuron_ids(row["session"])):
            assert float(row[f"mean:{row['session']}/{neuron}"]) == pytest.approx(rates[k], rel=1e-5, abs=1e-6)
            assert float(row[f"std:{row['session']}/{neuron}"]) == 0.0  # one checkpoint: no spread
        other = "twin1" if row["session"] == "twin0" else "twin0"
        assert row[f"mean:{other}/{other}-n000"] == ""  # predictions only for the image's own session


def test_controls_are_marked_with_their_dataset_ids_and_the_pngs_are_the_dataset_images(run):
    rows, _ = _manifest(run["stimuli"])
    with h5py.File(run["data"], "r") as f:
        stored = {s: {"ids": f[f"sessions/{s}/image_id"][()], "responses": f[f"sessions/{s}/responses"][()],
                      "images": f[f"sessions/{s}/images"][()], "neurons": [n.decode() for n in f[f"sessions/{s}/neuron_id"][()]]}
                  for s in ("twin0", "twin1")}
    top = [row for row in rows if row["origin"] == "natural_top"]
    for session, neuron in (("twin0", "twin0-n000"), ("twin1", "twin1-n003")):
        info = stored[session]
        best = info["ids"][np.argsort(-info["responses"][:, info["neurons"].index(neuron)], kind="stable")[:2]]
        mine = {int(row["dataset_image_id"]): row["rank"] for row in top if neuron in row["neuron"].split(";")}
        assert mine == {int(best[0]): "1", int(best[1]): "2"}  # by recorded responses (the default --top_by)
    natural = [row for row in rows if row["origin"].startswith("natural")]
    assert sum(row["origin"] == "natural_random" for row in natural) == 2 * 3  # per session of the targets
    for row in natural:
        info = stored[row["session"]]
        index = list(info["ids"]).index(int(row["dataset_image_id"]))
        png = read_stimulus(run["stimuli"] / row["file"], _shape(run["data"], row["session"]))
        np.testing.assert_array_equal(png, info["images"][index])  # the same picture, bit for bit
        assert row["method"] == row["seed"] == row["product"] == ""
    assert len({(row["session"], row["dataset_image_id"]) for row in natural}) == len(natural)  # each picture once
    ids = [int(row["image_id"]) for row in rows]
    assert len(set(ids)) == len(ids) and min(ids) > max(int(stored[s]["ids"].max()) for s in stored)
    written = sorted(p.name for p in run["stimuli"].iterdir())
    assert written == sorted([*(row["file"] for row in rows), "manifest.csv", "manifest.json"])
    with Image.open(run["stimuli"] / rows[0]["file"]) as image:
        assert image.mode == "L" and image.size == (16, 16)  # the twin's own 16 px grey images, 8 bits


def test_random_controls_are_seeded(run, tmp_path):
    again = tmp_path / "again"
    assert _encoders("export", run["last"], "--data", run["data"], "--products", run["product"], "--out", again,
                     "--top_natural", 2, "--random_natural", 3, "--seed", 0, "--seeds", "all") == 0
    assert (again / "manifest.csv").read_text() == (run["stimuli"] / "manifest.csv").read_text()
    other = tmp_path / "other_seed"
    assert _encoders("export", run["last"], "--data", run["data"], "--products", run["product"], "--out", other,
                     "--random_natural", 3, "--seed", 1) == 0
    drawn = {seed: {r["dataset_image_id"] for r in _manifest(folder)[0] if r["origin"] == "natural_random"}
             for seed, folder in ((0, run["stimuli"]), (1, other))}
    assert drawn[0] != drawn[1]


def test_ensemble_predictions_are_the_members_mean_and_spread(run, tmp_path):
    out = tmp_path / "ensemble"
    assert _encoders("export", run["last"], run["other"], "--data", run["data"], "--products", run["ensemble_product"],
                     "--out", out, "--random_natural", 1, "--top_natural", 1, "--top_by", "prediction") == 0
    rows, manifest = _manifest(out)
    assert sorted(manifest["checkpoints"]) == sorted([str(run["last"]), str(run["other"])])
    members = [load_encoder(run["last"]), load_encoder(run["other"])]
    with h5py.File(run["data"], "r") as f:  # --top_by prediction: the natural image the ensemble predicts highest
        x = members[0].image_transform(f["sessions/twin0/images"][()])
        ids = f["sessions/twin0/image_id"][()]
    with torch.no_grad():
        predicted = torch.stack([m(x, "twin0")[:, 1] for m in members]).mean(0)
    top = next(row for row in rows if row["origin"] == "natural_top")
    assert (top["neuron"], int(top["dataset_image_id"])) == ("twin0-n001", int(ids[int(predicted.argmax())]))
    for row in rows:
        x = _model_space(out, row, run["data"], members[0].image_transform)
        with torch.no_grad():
            rates = torch.stack([m(x, row["session"])[0] for m in members]).double()
        for k, neuron in enumerate(members[0].neuron_ids(row["session"])):
            assert float(row[f"mean:{row['session']}/{neuron}"]) == pytest.approx(float(rates[:, k].mean()), rel=1e-5)
            spread = float(rates[:, k].std(unbiased=False))
            assert float(row[f"std:{row['session']}/{neuron}"]) == pytest.approx(spread, rel=1e-4, abs=1e-7)
        assert float(row[f"std:{row['session']}/{members[0].neuron_ids(row['session'])[0]}"]) > 0


def test_add_appends_with_unique_ids_and_keeps_the_rows(run, tmp_path):
    folder = tmp_path / "stimuli"
    shutil.copytree(run["stimuli"], folder)
    before, _ = _manifest(folder)
    assert _encoders("export", run["last"], "--data", run["data"], "--products", run["product"], "--out", folder,
                     "--random_natural", 2, "--seed", 5, "--add") == 0
    after, manifest = _manifest(folder)
    assert after[: len(before)] == before  # old rows unchanged
    added = after[len(before):]
    assert [r["origin"] for r in added] == ["natural_random"] * 4  # the MEIs are there already: not added again
    ids = [int(r["image_id"]) for r in after]
    assert len(set(ids)) == len(ids) and min(int(r["image_id"]) for r in added) > max(int(r["image_id"]) for r in before)
    natural = [(r["session"], r["dataset_image_id"]) for r in after if r["dataset_image_id"]]
    assert len(set(natural)) == len(natural)  # each natural picture once
    assert len(manifest["exports"]) == 2 and all((folder / r["file"]).is_file() for r in after)


# ---- bad input: one line naming the file or argument, status 2, nothing written ----------------------------
def _product_copy(run: dict, tmp: Path, edit) -> Path:
    with xr.open_dataset(run["product"], engine="h5netcdf") as product:
        product = product.load()
    path = tmp / "edited_mei_ga.nc"
    edit(product).to_netcdf(path, engine="h5netcdf")
    return path


def _without_digests(product: xr.Dataset) -> xr.Dataset:
    """A product as written before products recorded their models' digests: only the checkpoint paths."""
    product.attrs.pop("models")
    return product


def test_older_products_are_checked_against_the_checkpoints_they_name(run, tmp_path):
    older = _product_copy(run, tmp_path, _without_digests)
    assert _encoders("export", run["last"], "--data", run["data"], "--products", older, "--out", tmp_path / "out") == 0
    assert [row["origin"] for row in _manifest(tmp_path / "out")[0]] == ["mei", "mei"]


def _full_folder(tmp: Path) -> Path:
    (tmp / "full").mkdir()
    (tmp / "full" / "notes.txt").write_text("a stimulus set of another day\n")
    return tmp / "full"


def _export(r: dict, t: Path, *extra: object, checkpoints: list | None = None, data: object = None,
            products: object = None, out: object = None) -> list:
    """`encoders export` of the run's checkpoint, data and product into a new folder, with parts replaced."""
    return ["export", *(checkpoints or [r["last"]]), "--data", data or r["data"], "--products", products or r["product"],
            "--out", out or t / "out", *extra]


def _renamed(field: str, values: list[str]):
    return lambda p: p.assign_coords({field: ("neuron", values)})


BAD = [  # (id, argv builder, fragments of the one error line)
    ("product_of_another_checkpoint", lambda r, t: _export(r, t, checkpoints=[r["other"]]),
     ["--products", "mei_ga.nc", "made with other checkpoint(s)", "other.ckpt"]),
    ("older_product_of_another_checkpoint",
     lambda r, t: _export(r, t, checkpoints=[r["other"]], products=_product_copy(r, t, _without_digests)),
     ["--products", "edited_mei_ga.nc", "made with other checkpoint(s)", "last.ckpt"]),
    ("out_not_empty", lambda r, t: _export(r, t, out=_full_folder(t)), ["--out", "full", "exists and is not empty", "--add"]),
    ("out_add_without_manifest", lambda r, t: _export(r, t, "--add", out=_full_folder(t)), ["--out", "full", "no manifest.json"]),
    ("add_other_checkpoints",
     lambda r, t: _export(r, t, "--add", checkpoints=[r["last"], r["other"]], products=r["ensemble_product"], out=r["stimuli"]),
     ["manifest.json", "other checkpoints", "same models"]),
    ("image_id_collision", lambda r, t: _export(r, t, "--first_id", 100),
     ["--first_id 100", "image id 100", "dataset's image ids", "twin0", "twin.h5"]),
    ("image_id_collision_in_folder",
     lambda r, t: _export(r, t, "--add", "--first_id", 121, "--random_natural", 1, out=r["stimuli"]),
     ["--first_id 121", "already in", "manifest.json"]),
    ("product_session_not_in_data",
     lambda r, t: _export(r, t, products=_product_copy(r, t, _renamed("session", ["twin9", "twin1"]))),
     ["edited_mei_ga.nc", "twin9/twin0-n000", "twin.h5", "has no session 'twin9'"]),
    ("product_neuron_not_in_data",
     lambda r, t: _export(r, t, products=_product_copy(r, t, _renamed("neuron_id", ["twin0-n000", "twin1-n042"]))),
     ["edited_mei_ga.nc", "twin1/twin1-n042", "has no neuron 'twin1-n042'"]),
    ("product_not_a_mei_product", lambda r, t: _export(r, t, products=r["data"]),
     ["--products", "twin.h5", "not an MEI product"]),
    ("product_missing", lambda r, t: _export(r, t, products=t / "gone.nc"), ["--products", "gone.nc", "file not found"]),
    ("data_missing", lambda r, t: _export(r, t, data=t / "gone.h5"), ["--data", "gone.h5", "file not found"]),
    ("checkpoint_missing", lambda r, t: _export(r, t, checkpoints=[t / "gone.ckpt"]), ["gone.ckpt", "checkpoint not found"]),
    ("top_natural_negative", lambda r, t: _export(r, t, "--top_natural", -1), ["--top_natural", "non-negative", "-1"]),
    ("background_out_of_range", lambda r, t: _export(r, t, "--background", 300), ["--background", "0..255", "300"]),
    ("too_many_random_images", lambda r, t: _export(r, t, "--random_natural", 500),
     ["--random_natural 500", "session 'twin0'", "only"]),
]


def _files(*folders: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("build, fragments", [pytest.param(b, f, id=name) for name, b, f in BAD])
def test_bad_input_gives_one_line_and_writes_nothing(run, tmp_path, capsys, build, fragments):
    argv = [str(a) for a in build(run, tmp_path)]
    before = _files(tmp_path, run["folder"])
    capsys.readouterr()
    code = encoders_main(argv)
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("encoders: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert _files(tmp_path, run["folder"]) == before, "a refused export wrote or changed files"


# ---- a colour dataset with crop and resize ------------------------------------------------------------------
def test_rgb_dataset_with_crop_and_resize_gets_its_own_shape_and_background_margins(tmp_path):
    data = tmp_path / "rgb.h5"
    write_dataset(data, [make_session("rgb0", n_images=60, n_neurons=4, size=24, channels=3)])
    config = fit_runs.tiny_config(tmp_path / "run", data, max_epochs=1)
    config["data"].update({"crop": [2, 4, 3, 1], "resize": [12, 12]})
    assert fit_runs.train_in_process(["fit", "--config", str(fit_runs.write_config(tmp_path / "run.yaml", config))]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    product = _mei([last], tmp_path / "products", neurons="[rgb0/rgb0-n1]", seeds="[0]")
    out = tmp_path / "stimuli"
    assert _encoders("export", last, "--data", data, "--products", product, "--out", out, "--background", 7,
                     "--top_natural", 1) == 0
    rows, _ = _manifest(out)
    mei = next(row for row in rows if row["origin"] == "mei")
    assert mei["background"] == "7.0" and mei["clipped_pixels"] == "0"
    with Image.open(out / mei["file"]) as image:
        assert image.mode == "RGB" and image.size == (24, 24)
        pixels = np.asarray(image)  # (y, x, channel)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()  # grey, in colour
    inside = np.zeros((24, 24), bool)
    inside[2 : 24 - 4, 3 : 24 - 1] = True
    assert (pixels[~inside] == 7).all()  # the cropped margins hold the background
    assert not (pixels[inside] == 7).all()
    # the pixels the model sees are the MEI's, within the 8-bit rounding, through crop and resize
    model = load_encoder(last)
    with xr.open_dataset(product, engine="h5netcdf") as p:
        image = torch.as_tensor(p["image"].values[0, 0, 0])[None]
    exported = _model_space(out, mei, data, model.image_transform)
    assert float((exported - image).abs().max()) * model.image_transform.std <= 0.5 + 1e-3
    natural = next(row for row in rows if row["origin"] == "natural_top")
    with h5py.File(data, "r") as f:
        ids = list(f["sessions/rgb0/image_id"][()])
        stored = f["sessions/rgb0/images"][ids.index(int(natural["dataset_image_id"]))]
    np.testing.assert_array_equal(read_stimulus(out / natural["file"], (3, 24, 24)), stored)


def test_resize_is_separable_and_undone_exactly_when_the_stored_images_are_larger():
    """What to_rig relies on: the resize is My @ X @ Mx.T, and to_rig's image resizes back to the input."""
    transform = ImageTransform(grayscale=True, crop=(1, 0, 0, 2), resize=(10, 8), mean=120.0, std=30.0)
    x = torch.randn(3, 1, 21, 18, dtype=torch.float64)
    resized = torch.nn.functional.interpolate(x.float(), size=(10, 8), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(resize_matrix(21, 10) @ x @ resize_matrix(18, 8).T, resized.double(), atol=1e-5, rtol=0)
    model_space = torch.randn(4, 1, 10, 8) * 0.5
    rig, clipped = transform.to_rig(model_space, (22, 20))
    assert rig.shape == (4, 22, 20) and rig.dtype == torch.uint8 and clipped.tolist() == [0, 0, 0, 0]
    assert (rig[:, 0] == 120).all() and (rig[:, :, -2:] == 120).all()  # default background: the training mean
    assert float((transform(rig) - model_space).abs().max()) * transform.std <= 0.5 + 1e-4
