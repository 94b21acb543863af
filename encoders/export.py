"""Rig stimuli from products: MEIs (and natural controls) as 8-bit PNGs in the dataset's own pixel space, with a manifest.

`export_stimuli` takes the checkpoints that made some MEI products (MEIs, MENIs, inhibitory
images), the dataset they were trained on and the product files, and writes a folder a recording
rig can show: one PNG per image at the dataset's own size and channels (the checkpoint's
grayscale/crop/resize/z-score undone by `ImageTransform.to_rig`), the top natural images of each
target neuron and a seeded random set of natural images as controls, and `manifest.csv` +
`manifest.json`: each image's id (never one of the dataset's ids of its session), file, origin,
and every neuron's predicted response to the PNG exactly as written (read back and passed through
the checkpoint's transform; mean and spread over an ensemble's members). Every check runs before
the first file is written; the files go through `encoders.outputs`. See the README, "Closing the loop".
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
import xarray as xr

from encoders.datasets.io import list_sessions, read_arrays
from encoders.datasets.schema import SESSIONS_GROUP
from encoders.errors import EncodersError
from encoders.outputs import atomic_write, check_writable, write_json, write_text

MANIFEST_CSV = "manifest.csv"
MANIFEST_JSON = "manifest.json"
FORMAT = 1
BATCH = 256  # images per forward pass when predicting
KINDS = {  # a product's "product" attribute -> its kind (encoders.products.meis.KINDS, and compute_meis' own names)
    "most exciting images": "mei", "most exciting naturalistic images": "meni", "most inhibitory images": "mii",
    "inhibitory images": "mii",
}

# the manifest's columns, in order (predictions follow as mean:<session>/<neuron_id>, std:<session>/<neuron_id>)
COLUMNS = {
    "image_id": "the image's id: unique in this folder, never one of the dataset's image ids of its session",
    "file": "the PNG, relative to the manifest's folder",
    "session": "the recording session whose neurons the image is for (and whose predictions are given)",
    "origin": "mei, meni or mii (a product's image), natural_top (a target neuron's top natural image) or "
              "natural_random (the seeded random natural set)",
    "neuron": "the target neuron's id (of a product image; of natural_top: every target it is a top image of, ';'-joined)",
    "method": "the product's method (e.g. ga, egg); empty for natural images",
    "seed": "the product image's seed; empty for natural images",
    "best_seed": "1 when the seed is the product's best for its neuron (highest activation; lowest for mii), else 0",
    "product": "the product file, as given; empty for natural images",
    "dataset_image_id": "a natural image's id in the dataset (the same picture); empty for product images",
    "rank": "natural_top: the image's rank among its target neuron's natural images, 1 = best (';'-joined like neuron)",
    "clipped_pixels": "pixels (y, x positions) whose value fell outside 0..255 and were clipped",
    "background": "the pixel value of the margins the crop removed (product images of a cropping transform)",
}


@dataclass(frozen=True)
class _Candidate:
    """One image to export, before it has an id: its 8-bit pixels (the dataset's layout) and its manifest fields."""

    session: str
    pixels: np.ndarray
    fields: dict
    key: tuple  # what makes it the same stimulus as one already exported (--add)


@dataclass
class Export:
    """What `export_stimuli` wrote: the folder, the new manifest rows, and a line for the log."""

    folder: Path
    rows: list[dict]
    skipped: int = 0
    clipped_images: int = 0
    line: str = ""
    files: list[Path] = field(default_factory=list)


def export_stimuli(
    checkpoints: list[str],
    data: str,
    products: list[str] | str,
    out: str,
    top_natural: int = 0,
    random_natural: int = 0,
    seed: int = 0,
    top_by: Literal["response", "prediction"] = "response",
    seeds: Literal["best", "all"] = "best",
    background: float | Literal["mean"] = "mean",
    first_id: int | None = None,
    add: bool = False,
    device: str = "cpu",
) -> Export:
    """Write rig stimuli (8-bit PNGs in the dataset's pixel space) and their manifest from MEI product files.

    Args:
        checkpoints: the checkpoints that made the products (several = an ensemble: predictions are
            its members' mean and standard deviation).
        data: the dataset file the checkpoints were trained on: image size, channels and ids, natural images.
        products: MEI product files (`encoders mei`: mei_*.nc, meni_*.nc, mii_*.nc), made with `checkpoints`.
        out: the folder to write (PNGs, manifest.csv, manifest.json); must be new or empty unless `add`.
        top_natural: per target neuron, this many of its session's natural images that drive it most.
        random_natural: per session of the targets, this many natural images drawn at random (seeded).
        seed: seed of the random natural images (with the session's name).
        top_by: rank natural images by the recorded responses (the data's field `responses`) or by the
            model's prediction.
        seeds: export each neuron's best seed only, or every seed of the product.
        background: pixel value of the margins a crop removed; "mean" = the training images' mean pixel.
        first_id: the first new image id; default one above every image id of the dataset (and of the
            folder's manifest, with `add`).
        add: append to the stimulus set already in `out` (same checkpoints and data), keeping ids unique.
        device: torch device for the predictions, e.g. cuda.
    """
    from encoders.devices import usable_device

    device = usable_device(device)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EncodersError(f"--seed: must be a non-negative integer, got {seed!r}")
    plan = _Plan.check(checkpoints, data, products, out, top_natural, random_natural, top_by, seeds, background, first_id, add)
    candidates = plan.candidates(top_natural, random_natural, seed, top_by, seeds, device)
    return plan.write(candidates, first_id, device, {
        "products": [str(p) for p in plan.product_paths], "top_natural": top_natural, "random_natural": random_natural,
        "seed": seed, "top_by": top_by, "seeds": seeds, "background": plan.background_value,
        "background_rule": "training mean" if background == "mean" else "given", "first_id": first_id,
    })


# ---- checks (nothing is written before all of them pass) ------------------------------------------------
@dataclass
class _Session:
    """What export needs of one session of the dataset."""

    image_ids: np.ndarray
    responses: np.ndarray
    neuron_ids: list[str]
    image_shape: tuple[int, ...]
    dtype: np.dtype


class _Plan:
    """One export: the checked inputs (models, data sessions, products, a previous manifest), then its images and files."""

    def __init__(self) -> None:
        self.members: list = []
        self.digests: list[str] = []
        self.checkpoints: list[str] = []
        self.data = Path()
        self.out = Path()
        self.add = False
        self.sessions: dict[str, _Session] = {}
        self.product_paths: list[Path] = []
        self.products: list[xr.Dataset] = []
        self.previous: dict | None = None
        self.background_value = 0.0
        self.skipped = 0

    @classmethod
    def check(cls, checkpoints, data, products, out, top_natural, random_natural, top_by, seeds, background, first_id,
              add) -> "_Plan":
        """Every check of the options, files, ids and folder, before any image is made or file written."""
        from encoders.checkpoints import load_encoder
        from encoders.ensemble import Ensemble
        from encoders.products.store import model_digest

        plan = cls()
        plan.add = bool(add)
        for name, value in (("--top_natural", top_natural), ("--random_natural", random_natural)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EncodersError(f"{name}: must be a non-negative integer, got {value!r}")
        if first_id is not None and (isinstance(first_id, bool) or not isinstance(first_id, int) or first_id < 0):
            raise EncodersError(f"--first_id: must be a non-negative integer, got {first_id!r}")
        if top_by not in ("response", "prediction"):
            raise EncodersError(f"--top_by: must be 'response' or 'prediction', got {top_by!r}")
        if seeds not in ("best", "all"):
            raise EncodersError(f"--seeds: must be 'best' or 'all', got {seeds!r}")
        if background != "mean" and not (isinstance(background, (int, float)) and 0 <= background <= 255):
            raise EncodersError(f"--background: must be 'mean' or a pixel value in 0..255, got {background!r}")
        plan.out = _check_out(Path(out), plan.add)
        if not checkpoints:
            raise EncodersError("checkpoints: give the checkpoint(s) that made the products")
        plan.checkpoints = [str(p) for p in checkpoints]
        plan.members = [load_encoder(p) for p in plan.checkpoints]
        try:
            Ensemble(plan.members)  # members must share sessions, neuron ids, transform and input shape
        except ValueError as error:
            raise EncodersError(f"checkpoints {plan.checkpoints}: not one ensemble: {error}") from None
        plan.digests = [model_digest(p) for p in plan.checkpoints]
        transform = plan.members[0].image_transform
        plan.background_value = float(transform.mean if background == "mean" else background)
        plan.data = Path(data)
        if not plan.data.is_file():
            raise EncodersError(f"--data {plan.data}: file not found")
        available = list_sessions(plan.data)  # validates the file
        paths = [products] if isinstance(products, str) else list(products or [])
        if not paths:
            raise EncodersError("--products: give at least one MEI product file")
        for path in map(Path, paths):
            plan.product_paths.append(path)
            plan.products.append(plan._check_product(path, available))
        if plan.add:
            plan.previous = plan._previous_manifest()
        return plan

    def _check_product(self, path: Path, available: list[str]) -> xr.Dataset:
        from encoders.products.store import recorded_checkpoints, recorded_models

        if not path.is_file():
            raise EncodersError(f"--products {path}: file not found")
        try:
            with xr.open_dataset(path, engine="h5netcdf") as opened:
                product = opened.load()
        except Exception:  # noqa: BLE001 - h5netcdf/xarray raise many types for foreign files
            raise EncodersError(f"--products {path}: not a readable product file (NetCDF)") from None
        if "image" not in product or product["image"].dims != ("method", "neuron", "seed", "channel", "y", "x") \
                or "session" not in product.coords or "neuron_id" not in product.coords:
            raise EncodersError(f"--products {path}: not an MEI product (images per method, neuron and seed); "
                                "export takes the files of `encoders mei` (MEIs, MENIs, inhibitory images)")
        made_with = recorded_models(product)
        if made_with is None:  # written before products recorded model digests: digest the checkpoints it names
            from encoders.products.store import model_digest

            made_with = []
            for recorded in recorded_checkpoints(product):
                if not Path(recorded).is_file():
                    raise EncodersError(f"--products {path}: records no model digest and the checkpoint it was made "
                                        f"with ({recorded}) is not here; cannot tell whether {self.checkpoints} made it")
                made_with.append(model_digest(recorded))
        if sorted(made_with) != sorted(self.digests):
            raise EncodersError(f"--products {path}: made with other checkpoint(s) ({recorded_checkpoints(product)}) than "
                                f"the ones named ({self.checkpoints}); give the checkpoints that made it")
        transform = self.members[0].image_transform.state()
        if json.loads(product.attrs.get("image_transform", "null") or "null") != transform:
            raise EncodersError(f"--products {path}: its images were made for another image transform than the "
                                "checkpoints' (another data file or preprocessing)")
        model = self.members[0]
        for session, neuron in zip(product["session"].values.tolist(), product["neuron_id"].values.tolist()):
            session, neuron = str(session), str(neuron)
            if session not in available:
                raise EncodersError(f"--products {path}: neuron {session}/{neuron}: the data file {self.data} has no "
                                    f"session {session!r} (it has {available})")
            info = self._session(session)
            if neuron not in info.neuron_ids:
                raise EncodersError(f"--products {path}: neuron {session}/{neuron}: session {session!r} of {self.data} "
                                    f"has no neuron {neuron!r}")
            if session not in model.sessions or neuron not in model.neuron_ids(session):
                raise EncodersError(f"--products {path}: neuron {session}/{neuron} is not one of the checkpoints' neurons")
        return product

    def _session(self, session: str) -> _Session:
        """A session's ids, responses and image shape, read once; its neurons and image size checked against the model."""
        if session in self.sessions:
            return self.sessions[session]
        arrays = read_arrays(self.data, session, ["image_id", "responses", "neuron_id"])
        with h5py.File(self.data, "r") as f:
            stored = f[f"{SESSIONS_GROUP}/{session}/images"]
            shape, dtype = tuple(int(s) for s in stored.shape[1:]), stored.dtype
        info = _Session(np.asarray(arrays["image_id"], dtype=np.int64), np.asarray(arrays["responses"], dtype=np.float64),
                        [str(n) for n in arrays["neuron_id"]], shape, dtype)
        model = self.members[0]
        if len(shape) == 3 and shape[0] not in (1, 3):
            raise EncodersError(f"--data {self.data}: session {session!r} has {shape[0]}-channel images; PNG stimuli "
                                "are grey or RGB")
        # the one model-matches-data check (neuron ids where the model has the session, model-space image shape);
        # lazily, in the model's own transform: no image is read
        from encoders.datasets.recording import Recording

        Recording(self.data, sessions=[session], transform=model.image_transform, in_memory=False).check_model(
            model, sessions=[session] if session in model.sessions else [], what="the checkpoints")
        self.sessions[session] = info
        return info

    def _previous_manifest(self) -> dict | None:
        """The manifest of the stimulus set in `out` (--add), which must be of the same models and data."""
        path = self.out / MANIFEST_JSON
        if not self.out.is_dir() or not any(self.out.iterdir()):
            return None  # nothing there yet: --add starts a new set
        if not path.is_file():
            raise EncodersError(f"--out {self.out}: --add appends to a stimulus set, but the folder has no {MANIFEST_JSON}")
        try:
            manifest = json.loads(path.read_text())
            rows, models = manifest["stimuli"], manifest["models"]
        except (ValueError, KeyError, TypeError):
            raise EncodersError(f"--out {path}: not a manifest of `encoders export`") from None
        if sorted(models) != sorted(self.digests):
            raise EncodersError(f"--out {path}: its stimuli were exported with other checkpoints ({manifest.get('checkpoints')}) "
                                f"than {self.checkpoints}; --add needs the same models, so that predictions compare")
        same_data = Path(str(manifest.get("data", ""))).name == self.data.name
        if not same_data or manifest.get("transform") != self.members[0].image_transform.state():
            raise EncodersError(f"--out {path}: its stimuli were exported for another data file ({manifest.get('data')}) "
                                f"than {self.data}")
        if not isinstance(rows, list):
            raise EncodersError(f"--out {path}: not a manifest of `encoders export`")
        return manifest

    # ---- the images -------------------------------------------------------------------------------------
    def candidates(self, top_natural, random_natural, seed, top_by, seeds, device) -> list[_Candidate]:
        """Every image to export, product images first, then natural top images, then random ones."""
        done = {_key_of(row) for row in (self.previous or {}).get("stimuli", [])}
        out: list[_Candidate] = []
        targets: dict[tuple[str, str], None] = {}
        for path, product in zip(self.product_paths, self.products):
            out += self._product_images(path, product, seeds)
            for session, neuron in zip(product["session"].values.tolist(), product["neuron_id"].values.tolist()):
                targets[(str(session), str(neuron))] = None
        sessions = list(dict.fromkeys(session for session, _ in targets))
        chosen: dict[str, dict[int, list[tuple[str, int]]]] = {s: {} for s in sessions}  # session -> index -> (neuron, rank)
        if top_natural:
            scores = {s: self._scores(s, top_by, device) for s in sessions}
            for session, neuron in targets:
                info = self.sessions[session]
                if top_natural > len(info.image_ids):
                    raise EncodersError(f"--top_natural {top_natural}: session {session!r} has only {len(info.image_ids)} images")
                column = info.neuron_ids.index(neuron)
                order = np.argsort(-scores[session][:, column], kind="stable")[:top_natural]
                for rank, index in enumerate(order.tolist(), start=1):
                    chosen[session].setdefault(index, []).append((neuron, rank))
        drawn: dict[str, list[int]] = {}
        for session in sessions:
            if not random_natural:
                break
            info = self.sessions[session]
            exported = {key[2] for key in done if key[0] == "natural" and key[1] == session}
            left = [i for i in range(len(info.image_ids)) if i not in chosen[session] and int(info.image_ids[i]) not in exported]
            if random_natural > len(left):
                raise EncodersError(f"--random_natural {random_natural}: session {session!r} has only {len(left)} natural "
                                    "images left to draw (not top images, not already in the folder)")
            rng = np.random.default_rng([int(seed), zlib.crc32(session.encode())])
            drawn[session] = sorted(rng.choice(left, size=random_natural, replace=False).tolist())
        for session in sessions:
            info = self.sessions[session]
            indices = sorted(chosen[session]) + drawn.get(session, [])
            if not indices:
                continue
            with h5py.File(self.data, "r") as f:
                stored = f[f"{SESSIONS_GROUP}/{session}/images"]
                images = np.stack([stored[i] for i in indices])
            pixels, clipped = _eight_bit(images)
            for n, index in enumerate(indices):
                top = chosen[session].get(index)
                fields = {
                    "origin": "natural_top" if top else "natural_random", "dataset_image_id": int(info.image_ids[index]),
                    "neuron": ";".join(neuron for neuron, _ in top) if top else "",
                    "rank": ";".join(str(rank) for _, rank in top) if top else "", "clipped_pixels": int(clipped[n]),
                }
                out.append(_Candidate(session, pixels[n], fields, ("natural", session, int(info.image_ids[index]))))
        new = []
        for candidate in out:  # each stimulus once: not again when in the folder (--add) or given twice
            if candidate.key not in done:
                done.add(candidate.key)
                new.append(candidate)
        self.skipped = len(out) - len(new)
        return new

    def _product_images(self, path: Path, product: xr.Dataset, seeds: str) -> list[_Candidate]:
        transform = self.members[0].image_transform
        kind = KINDS.get(str(product.attrs.get("product", "")), "mii" if int(product.attrs.get("minimize", 0)) else "mei")
        fingerprint = str(product.attrs.get("fingerprint", ""))
        sessions = [str(s) for s in product["session"].values]
        neurons = [str(n) for n in product["neuron_id"].values]
        product_seeds = [int(s) for s in product["seed"].values]
        best = product["best_seed"].values if "best_seed" in product else None
        out = []
        for m, method in enumerate(str(x) for x in product["method"].values):
            for n, (session, neuron) in enumerate(zip(sessions, neurons)):
                best_seed = int(best[m, n]) if best is not None else product_seeds[0]
                chosen = product_seeds if seeds == "all" else [best_seed]
                images = torch.as_tensor(np.stack([product["image"].values[m, n, product_seeds.index(s)] for s in chosen]))
                pixels, clipped = transform.to_rig(images, self.sessions[session].image_shape, self.background_value)
                cropped = any(int(c) for c in transform.crop)
                for i, s in enumerate(chosen):
                    fields = {"origin": kind, "neuron": neuron, "method": method, "seed": s, "best_seed": int(s == best_seed),
                              "product": str(path), "clipped_pixels": int(clipped[i]),
                              "background": self.background_value if cropped else "", "product_fingerprint": fingerprint}
                    key = ("product", fingerprint, session, neuron, method, s)
                    out.append(_Candidate(session, pixels[i].numpy(), fields, key))
        return out

    def _scores(self, session: str, top_by: str, device: torch.device) -> np.ndarray:
        """(images, neurons) what natural images are ranked by: recorded responses, or the (ensemble mean) prediction."""
        info = self.sessions[session]
        if top_by == "response":
            return info.responses
        with h5py.File(self.data, "r") as f:
            images = f[f"{SESSIONS_GROUP}/{session}/images"]
            x = self.members[0].image_transform.apply_chunked(images)
        return self._predict(x, session, device).mean(0)

    def _predict(self, x: torch.Tensor, session: str, device: torch.device) -> np.ndarray:
        """(members, images, neurons) predicted rates of model-space images."""
        rates = []
        with torch.no_grad():
            for member in self.members:
                member = member.to(device).eval()
                rates.append(torch.cat([member(x[i : i + BATCH].to(device), session).cpu() for i in range(0, len(x), BATCH)]))
        return torch.stack(rates).double().numpy()

    # ---- writing ---------------------------------------------------------------------------------------
    def write(self, candidates: list[_Candidate], first_id: int | None, device: torch.device, settings: dict) -> Export:
        previous_rows = list((self.previous or {}).get("stimuli", []))
        ids = self._ids(candidates, first_id, previous_rows)
        encoded = [_png(c.pixels) for c in candidates]
        rows = []
        for session in dict.fromkeys(c.session for c in candidates):
            members = [i for i, c in enumerate(candidates) if c.session == session]
            shape = self.sessions[session].image_shape
            back = np.stack([_read_png(encoded[i], shape) for i in members])  # the PNGs as the rig will read them
            rates = self._predict(self.members[0].image_transform(back), session, device)
            mean, std = rates.mean(0), rates.std(0)
            neuron_ids = self.sessions[session].neuron_ids
            for j, i in enumerate(members):
                candidate = candidates[i]
                row = {"image_id": ids[i], "file": f"{ids[i]}.png", "session": session, "neuron": "", "method": "", "seed": "",
                       "best_seed": "", "product": "", "dataset_image_id": "", "rank": "", "background": ""}
                row.update(candidate.fields)
                row["predicted"] = {n: {"mean": float(mean[j, k]), "std": float(std[j, k])} for k, n in enumerate(neuron_ids)}
                rows.append((i, row))
        rows = [row for _, row in sorted(rows, key=lambda item: item[0])]
        manifest = {
            "format": FORMAT, "created_by": "encoders export", "checkpoints": self.checkpoints, "models": self.digests,
            "data": str(self.data), "transform": self.members[0].image_transform.state(),
            "sessions": {s: {"neuron_ids": info.neuron_ids, "image_shape": list(info.image_shape),
                             "stored_dtype": str(info.dtype)}
                         for s, info in {**self._previous_sessions(), **self.sessions}.items()},
            "prediction": "predicted rate (spikes per bin, as the model was trained) of each neuron of the image's session to "
                          "the PNG as written, read back through the checkpoints' transform; mean and standard deviation "
                          "(ddof 0) over the checkpoints (std 0 for one)",
            "columns": COLUMNS,
            "exports": [*(self.previous or {}).get("exports", []), settings],
            "stimuli": previous_rows + rows,
        }
        files = self._write_files(candidates, encoded, ids, manifest)
        clipped = sum(1 for row in rows if row["clipped_pixels"])
        counts = {}
        for row in rows:
            counts[row["origin"]] = counts.get(row["origin"], 0) + 1
        what = ", ".join(f"{n} {origin}" for origin, n in counts.items()) or "nothing new"
        line = (f"{len(rows)} stimuli ({what}) -> {self.out} ({MANIFEST_CSV}, {MANIFEST_JSON}"
                + (f"; ids {min(r['image_id'] for r in rows)}..{max(r['image_id'] for r in rows)}" if rows else "")
                + (f"; {clipped} image(s) with clipped pixels" if clipped else "")
                + (f"; {self.skipped} already in the set, not added again" if self.skipped else "") + ")")
        return Export(self.out, rows, self.skipped, clipped, line, files)

    def _previous_sessions(self) -> dict[str, _Session]:
        """Sessions named by the previous manifest (--add) that this export does not touch, kept in the new one."""
        out = {}
        for session, info in (self.previous or {}).get("sessions", {}).items():
            if session not in self.sessions:
                out[session] = _Session(np.zeros(0, np.int64), np.zeros((0, 0)), list(info["neuron_ids"]),
                                        tuple(info["image_shape"]), np.dtype(info["stored_dtype"]))
        return out

    def _ids(self, candidates: list[_Candidate], first_id: int | None, previous_rows: list[dict]) -> list[int]:
        """New ids: consecutive from `first_id`, or from one above every id of the dataset and the folder's manifest."""
        used = {int(row["image_id"]) for row in previous_rows}
        with h5py.File(self.data, "r") as f:
            dataset_max = max(int(np.max(group["image_id"][()], initial=-1)) for group in f[SESSIONS_GROUP].values())
        start = max([dataset_max, *used]) + 1 if first_id is None else int(first_id)
        ids = list(range(start, start + len(candidates)))
        dataset_ids = {session: set(info.image_ids.tolist()) for session, info in self.sessions.items()}
        for image_id, candidate in zip(ids, candidates):
            if image_id in used:
                raise EncodersError(f"--first_id {first_id}: image id {image_id} is already in {self.out / MANIFEST_JSON}; "
                                    f"leave --first_id out to continue above {max(used)}")
            if image_id in dataset_ids[candidate.session]:
                raise EncodersError(f"--first_id {first_id}: image id {image_id} is one of the dataset's image ids of session "
                                    f"{candidate.session!r} in {self.data}; leave --first_id out (ids start above {dataset_max})")
        return ids

    def _write_files(self, candidates: list[_Candidate], encoded: list[bytes], ids: list[int], manifest: dict) -> list[Path]:
        """PNGs, then manifest.csv, then manifest.json (the record --add reads) last. A new set is written into a
        hidden folder beside `out` and renamed into place when whole; --add writes into `out`."""
        fresh = self.previous is None
        folder = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}") if fresh else self.out
        try:
            for image_id, data in zip(ids, encoded):
                atomic_write(folder / f"{image_id}.png", lambda tmp, data=data: tmp.write_bytes(data))
            write_text(_csv(manifest), folder / MANIFEST_CSV)
            write_json(manifest, folder / MANIFEST_JSON)
            if fresh:
                if self.out.is_dir():
                    self.out.rmdir()  # empty: checked before
                os.replace(folder, self.out)
        except BaseException:
            if fresh:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return [self.out / f"{image_id}.png" for image_id in ids] + [self.out / MANIFEST_CSV, self.out / MANIFEST_JSON]


def _check_out(out: Path, add: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise EncodersError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not add:
        raise EncodersError(f"--out {out}: exists and is not empty; give a new folder, or --add to append to its stimulus set")
    check_writable(out)
    if not (out.is_dir() and any(out.iterdir())):
        check_writable(out.parent)  # a new set is written beside it first
    return out


def _key_of(row: dict) -> tuple:
    """What makes a manifest row the same stimulus as a candidate (`_Candidate.key`)."""
    if str(row.get("origin", "")).startswith("natural"):
        return ("natural", str(row["session"]), int(row["dataset_image_id"]))
    seed = row.get("seed")
    return ("product", str(row.get("product_fingerprint", "")), str(row["session"]), str(row["neuron"]), str(row["method"]),
            int(seed) if seed not in ("", None) else seed)


def _eight_bit(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored pixels as uint8 (float images rounded, and clipped to 0..255) and per image the clipped pixel count."""
    if images.dtype == np.uint8:
        return images, np.zeros(len(images), dtype=np.int64)
    rounded = np.round(images.astype(np.float64))
    outside = (rounded < 0) | (rounded > 255)
    if outside.ndim == 4:
        outside = outside.any(1)
    return np.clip(rounded, 0, 255).astype(np.uint8), outside.reshape(len(images), -1).sum(1)


def _png(pixels: np.ndarray) -> bytes:
    """An 8-bit PNG of one image in the dataset's layout ((H, W), (1, H, W) grey or (3, H, W) RGB)."""
    from PIL import Image

    array = pixels[0] if pixels.ndim == 3 and pixels.shape[0] == 1 else pixels
    if array.ndim == 3:
        array = np.ascontiguousarray(np.moveaxis(array, 0, -1))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_png(data: bytes | Path, shape: Sequence[int]) -> np.ndarray:
    """A PNG (bytes or file) back in the dataset's layout `shape` ((H, W) or (C, H, W)), uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        array = np.array(image)  # a writable copy (torch warns on read-only arrays)
    if array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    return array.reshape(tuple(shape))


def read_stimulus(path: str | Path, shape: Sequence[int]) -> np.ndarray:
    """An exported PNG as the dataset stores images of `shape` ((H, W) or (C, H, W)), uint8: what to
    pass through a checkpoint's transform to predict the response to it."""
    return _read_png(Path(path), shape)


def _csv(manifest: dict) -> str:
    """The manifest as one CSV table: the columns, then mean:/std: prediction columns of every session's neurons."""
    neurons = [f"{s}/{n}" for s, info in manifest["sessions"].items() for n in info["neuron_ids"]]
    header = [*COLUMNS, *(f"mean:{n}" for n in neurons), *(f"std:{n}" for n in neurons)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in manifest["stimuli"]:
        predicted = {f"{row['session']}/{n}": v for n, v in row["predicted"].items()}
        writer.writerow([*(row.get(c, "") for c in COLUMNS),
                         *(_number(predicted[n]["mean"]) if n in predicted else "" for n in neurons),
                         *(_number(predicted[n]["std"]) if n in predicted else "" for n in neurons)])
    return buffer.getvalue()


def _number(value: float) -> str:
    return repr(float(value))
