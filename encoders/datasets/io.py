"""Read and write dataset files (schema in `schema.py`).

Writes are atomic: everything goes to a temporary file beside the target, which is renamed into
place only after every session was validated and written, so a failed conversion leaves nothing.
Reads are lazy where it matters: `open_session` gives an xarray Dataset backed by the file, and
`read_arrays` reads only the fields asked for.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from encoders.datasets.schema import (
    DIMENSIONS,
    GROUND_TRUTH_GROUP,
    SCHEMA_VERSION,
    SESSIONS_GROUP,
    SessionData,
)
from encoders.datasets.validation import validate_file, validate_session
from encoders.errors import DatasetError
from encoders.outputs import atomic_write, ensure_space

IMAGE_CHUNK = 1  # images per HDF5 chunk: one image, so random batches of the lazy path read only what they use


def write_dataset(
    path: str | Path,
    sessions: Iterable[SessionData],
    attrs: Mapping[str, str | int | float] | None = None,
    ground_truth: Mapping[str, np.ndarray] | None = None,
) -> list[str]:
    """Validate and write sessions (consumed one at a time) to `path` atomically; return their ids."""
    path = Path(path)
    if path.suffix not in (".h5", ".hdf5", ".nc"):
        raise DatasetError(path, "output file must end in .h5, .hdf5 or .nc")
    written: list[str] = []

    def write(tmp: Path) -> None:
        root = {
            "schema_version": SCHEMA_VERSION,
            "created_by": "encoders",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        root.update(dict(attrs or {}))
        xr.Dataset(attrs=root).to_netcdf(tmp, mode="w", engine="h5netcdf")
        for session in sessions:
            validate_session(session, path)
            ensure_space(path, _nbytes(session))  # before HDF5 writes: h5py can crash the process on a full disk
            if session.session_id in written:
                raise DatasetError(path, "session written twice", session=session.session_id)
            _session_to_xarray(session).to_netcdf(
                tmp, mode="a", group=f"{SESSIONS_GROUP}/{session.session_id}", engine="h5netcdf",
                encoding=_encoding(session),
            )
            written.append(session.session_id)
        if not written:
            raise DatasetError(path, "no sessions to write", field=SESSIONS_GROUP)
        if ground_truth is not None:
            _ground_truth_to_xarray(ground_truth).to_netcdf(
                tmp, mode="a", group=GROUND_TRUTH_GROUP, engine="h5netcdf"
            )
        validate_file(tmp)

    atomic_write(path, write)
    return written


def _nbytes(session: SessionData) -> int:
    """The bytes a session's arrays take (what its HDF5 group will about take, uncompressed)."""
    arrays = [session.images, session.image_ids, session.responses, session.trials, *session.neuron_meta.values()]
    return sum(np.asarray(a).nbytes for a in arrays if a is not None) + 64 * session.n_images


def list_sessions(path: str | Path) -> list[str]:
    """Session ids in a dataset file, after validating it."""
    return validate_file(path)


def open_session(path: str | Path, session: str) -> xr.Dataset:
    """A lazily loaded, labelled view of one session (dims image, neuron, repeat, channel, y, x)."""
    _require_session(path, session)
    return xr.open_dataset(path, group=f"{SESSIONS_GROUP}/{session}", engine="h5netcdf")


def read_arrays(path: str | Path, session: str, fields: Iterable[str]) -> dict[str, np.ndarray]:
    """Read whole fields of one session into memory (strings decoded)."""
    with h5py.File(path, "r") as f:
        return read_fields(f, path, session, fields)


def read_fields(f: h5py.File, path: str | Path, session: str, fields: Iterable[str]) -> dict[str, np.ndarray]:
    """`read_arrays` from a file already open."""
    out = {}
    group = _require_session_group(f, path, session)
    for name in fields:
        if name not in group:
            raise DatasetError(path, "missing field", session=session, field=name)
        data = group[name]
        out[name] = data.asstr()[()] if data.dtype.kind == "O" else data[()]
    return out


def read_session(path: str | Path, session: str) -> SessionData:
    """Read one whole session into memory."""
    with h5py.File(path, "r") as f:
        group = _require_session_group(f, path, session)
        names = [k for k in group.keys() if isinstance(group[k], h5py.Dataset)]
        attrs = {k: _decode(v) for k, v in group.attrs.items() if not k.startswith("_") and k != "coordinates"}
        # 1-d metadata belongs to the dimension its HDF5 dimension scale names (netCDF4 flavour)
        dims = {k: _dimension(group[k]) for k in names if group[k].ndim == 1}
    arrays = read_arrays(path, session, names)
    reserved = {"images", "image_id", "tier", "responses", "trials", "neuron_id", *DIMENSIONS}
    meta = {dim: {k: v for k, v in arrays.items() if k not in reserved and dims.get(k) == dim} for dim in ("neuron", "image")}
    return SessionData(
        session_id=session,
        images=arrays["images"],
        image_ids=arrays["image_id"],
        responses=arrays["responses"],
        tiers=arrays["tier"],
        neuron_ids=arrays["neuron_id"],
        trials=arrays.get("trials"),
        neuron_meta=meta["neuron"],
        attrs=attrs,
        image_meta=meta["image"],
    )


def read_ground_truth(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays that rebuild a synthetic twin's true neurons (see `encoders.twin`)."""
    with h5py.File(path, "r") as f:
        if GROUND_TRUTH_GROUP not in f:
            raise DatasetError(path, "this dataset has no ground truth (only synthetic twins do)", field=GROUND_TRUTH_GROUP)
        group = f[GROUND_TRUTH_GROUP]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(group.attrs["arrays"])]
        return {name: group[name][()] for name in names}


def root_attrs(path: str | Path) -> dict[str, object]:
    with h5py.File(path, "r") as f:
        return {k: _decode(v) for k, v in f.attrs.items() if not k.startswith("_")}


def _require_session(path: str | Path, session: str) -> None:
    with h5py.File(path, "r") as f:
        _require_session_group(f, path, session)


def _require_session_group(f: h5py.File, path: str | Path, session: str) -> h5py.Group:
    sessions = f.get(SESSIONS_GROUP)
    if sessions is None or session not in sessions:
        known = sorted(sessions.keys()) if sessions is not None else []
        raise DatasetError(path, f"no such session; the file has {known}", session=session)
    return sessions[session]


def _session_to_xarray(session: SessionData) -> xr.Dataset:
    images = np.asarray(session.images)
    image_dims = ("image", "y", "x") if images.ndim == 3 else ("image", "channel", "y", "x")
    data_vars = {
        "images": (image_dims, images),
        # float32 or float64 as given: converted values must survive exactly
        "responses": (("image", "neuron"), np.asarray(session.responses)),
    }
    if session.trials is not None:
        data_vars["trials"] = (("image", "repeat", "neuron"), np.asarray(session.trials))
    coords = {
        "image_id": ("image", np.asarray(session.image_ids, dtype=np.int64)),
        "tier": ("image", np.asarray(session.tiers).astype(str).astype(object)),
        "neuron_id": ("neuron", np.asarray(session.neuron_ids).astype(str).astype(object)),
    }
    for dim, meta in (("neuron", session.neuron_meta), ("image", session.image_meta)):
        for name, values in meta.items():
            values = np.asarray(values)
            coords[name] = (dim, values.astype(object) if values.dtype.kind in "US" else values)
    attrs = {"spike_counts": 1, "units": "spikes per bin"}
    attrs.update(session.attrs)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _encoding(session: SessionData) -> dict[str, dict]:
    shape = np.shape(session.images)
    encoding = {"images": {"chunksizes": (min(shape[0], IMAGE_CHUNK), *shape[1:])}}
    # NaN marks a missing repeat in trials; say so explicitly rather than relying on a default.
    if session.trials is not None:
        encoding["trials"] = {"_FillValue": np.asarray(np.nan, dtype=np.asarray(session.trials).dtype)}
    encoding["responses"] = {"_FillValue": None}
    return encoding


def _ground_truth_to_xarray(arrays: Mapping[str, np.ndarray]) -> xr.Dataset:
    data_vars = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        data_vars[name] = ([f"{name}_{i}" for i in range(value.ndim)], value)
    return xr.Dataset(data_vars, attrs={"arrays": list(arrays)})


def _dimension(dataset: h5py.Dataset) -> str | None:
    """The name of a 1-d variable's dimension, from its HDF5 dimension scale (None when it has none)."""
    scales = dataset.dims[0].values()
    return scales[0].name.rsplit("/", 1)[-1] if scales else None


def _decode(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.size == 1):
        return value.item()
    return value
