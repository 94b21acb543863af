"""`encoders prepare table`: a lab's own recordings (stimulus image files + response tables or arrays)
into the dataset format, described by one YAML file with a block per session (README, "Your data")::

    title: My V4 recordings
    root: .                       # the paths below are relative to it; itself relative to this file's folder
    sessions:
      - id: m1_day3
        images: {folder: stimuli/day3, pattern: 'img_(\\d+)\\.png', bits: 8, channels: 1}
        responses: {file: day3_counts.csv, layout: per_trial, image_column: image_id,
                    neurons: {columns: 'unit_.*'}, units: spike_counts, window: '70-170 ms'}
        neuron_meta: {file: day3_units.csv, id_column: unit}         # optional
        split: {seed: 0, test_fraction: 0.1, validation_fraction: 0.1, repeats_to_test: true}  # or {column: tier}

Responses are a table (.csv, .tsv, .parquet: one row per image, or per trial with the image id repeated
over rows; the neuron columns chosen by a regex or a list, their names the neuron ids) or an array
(.npy, .npz member, HDF5 dataset) with declared `axes`, e.g. [neuron, image] or [neuron, image, repeat]
with NaN for missing repeats. Per-trial responses become `trials` (image, repeat, neuron), NaN-padded,
and their mean the `responses`; an averaged block plus a per-trial `trials` block are stored as given.

Order of work: the whole config is checked first (keys, types, values, that every file exists), then
the sessions are read one at a time and written atomically by `write_dataset`, so a bad input leaves
no output. Every problem is one `DatasetError` naming the file, the session and the field.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from encoders.datasets.image_files import ARRAY_SUFFIXES, ImageSource, load_array, read_images
from encoders.datasets.io import write_dataset
from encoders.datasets.schema import TIERS, SessionData
from encoders.datasets.splits import SplitRule, assign_tiers
from encoders.errors import DatasetError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
UNITS = {"spike_counts": "spike counts", "rates": "firing rates (Hz)", "dff": "ΔF/F"}
RESERVED_ATTRS = ("units", "response_units", "window", "spike_counts", "split", "provenance", "image_bits", "image_scale")


@dataclass
class Neurons:
    """Which columns of a table are neurons, and how the rows of an array are named.

    Args:
        columns: tables: a regular expression (matching whole column names) or a list of column names;
            the names are the neuron ids. Default: every column but the image id and tier columns.
        id_format: arrays: neuron i's id, a Python format string with {session} and {i}.
    """

    columns: str | list[str] | None = None
    id_format: str = "{session}-{i:03d}"


@dataclass
class ResponseSource:
    """One file of responses: a table (.csv, .tsv, .parquet) or an array (.npy, .npz, HDF5).

    Args:
        file: the file, relative to the config's root.
        units: spike_counts (non-negative), rates (Hz) or dff (ΔF/F, may be negative); required for
            `responses`, and a `trials` block must agree.
        window: the response window, e.g. '70-170 ms' (free text, stored with the units).
        layout: tables: per_image (one row per image) or per_trial (image id repeated over rows,
            in presentation order); default per_image.
        image_column: tables: the column of image ids (the numbers in the image file names); default image_id.
        neurons: which columns are neurons (tables) or how neurons are named (arrays).
        key: arrays: the .npz member or HDF5 dataset path.
        axes: arrays: the array's axes, image and neuron and optionally repeat in the file's order;
            default [image, neuron] or [image, repeat, neuron].
        image_id_offset: arrays: image ids are index + image_id_offset; default: the images' ids in order.
    """

    file: str
    units: Literal["spike_counts", "rates", "dff"] | None = None
    window: str = ""
    layout: Literal["per_image", "per_trial"] | None = None
    image_column: str | None = None
    neurons: Neurons = field(default_factory=Neurons)
    key: str | None = None
    axes: list[Literal["image", "neuron", "repeat"]] | None = None
    image_id_offset: int | None = None

    @property
    def is_table(self) -> bool:
        return Path(self.file).suffix.lower() in TABLE_SUFFIXES

    def problems(self, base: Path) -> Iterator[tuple[str, str]]:
        """(field, problem) for each bad option, without reading the file."""
        path = base / self.file
        suffix = path.suffix.lower()
        if suffix not in TABLE_SUFFIXES + ARRAY_SUFFIXES:
            yield "file", f"{path}: must end in one of {', '.join(TABLE_SUFFIXES + ARRAY_SUFFIXES)}"
        elif not path.is_file():
            yield "file", f"{path}: file not found"
        elif suffix == ".parquet":
            yield from _pyarrow_problem()
        if self.is_table:
            for name in ("key", "axes", "image_id_offset"):
                if getattr(self, name) is not None:
                    yield name, "applies to arrays (.npy, .npz, HDF5), not tables"
        else:
            for name in ("layout", "image_column"):
                if getattr(self, name) is not None:
                    yield name, "applies to tables (.csv, .tsv, .parquet); arrays declare axes"
            if self.axes is not None and (len(set(self.axes)) != len(self.axes) or not {"image", "neuron"} <= set(self.axes)):
                yield "axes", f"must name image and neuron (and optionally repeat) once each, got {self.axes}"
            if suffix in (".h5", ".hdf5", ".nc") and not self.key:
                yield "key", "an HDF5 file needs the dataset path as key"
        if isinstance(self.neurons.columns, str):
            yield from _regex_problem(self.neurons.columns, "neurons.columns")

    @property
    def per_trial(self) -> bool | None:
        """Whether the block holds single trials (None: an array whose rank decides)."""
        if self.is_table:
            return self.layout == "per_trial"
        return None if self.axes is None else "repeat" in self.axes


@dataclass
class MetaTable:
    """A per-neuron or per-image metadata table (.csv, .tsv, .parquet), one row per id.

    Args:
        file: the table, relative to the config's root.
        id_column: the column of neuron ids (per-neuron) or image ids (per-image).
        columns: the columns to store (regex matching whole names, or a list); default: all others.
    """

    file: str
    id_column: str
    columns: str | list[str] | None = None


@dataclass
class SessionSpec:
    """One session of a `prepare table` config.

    Args:
        id: the session id (no '/').
        images: the stimulus images (see `encoders.datasets.image_files.ImageSource`).
        responses: the responses: averaged, or per trial (then averaged here).
        trials: optional single trials beside averaged `responses` (same images and neurons).
        split: the train/validation/test rule (see `encoders.datasets.splits.SplitRule`).
        neuron_meta: optional per-neuron metadata table.
        image_meta: optional per-image metadata table (may hold the split's tier column).
        attrs: free session attributes, e.g. {animal: PE, area: V4}.
    """

    id: str | int
    images: ImageSource
    responses: ResponseSource
    trials: ResponseSource | None = None
    split: SplitRule = field(default_factory=SplitRule)
    neuron_meta: MetaTable | None = None
    image_meta: MetaTable | None = None
    attrs: dict[str, str | int | float] = field(default_factory=dict)


@dataclass
class TableImport:
    """A `prepare table` config: the dataset's title and source, the root of its paths, and its sessions."""

    sessions: list[SessionSpec]
    title: str = "Imported recordings"
    source: str = ""
    root: str = "."


def import_table(config: str, out: str, root: str | None = None) -> list[str]:
    """Import the sessions a YAML file describes into one dataset file, atomically.

    Args:
        config: the import YAML (README, "Your data"); unknown keys are refused.
        out: the dataset file to write (.h5).
        root: folder the YAML's paths are relative to; default: the YAML's `root` (relative to its folder).
    """
    spec, base = load_config(config, root)
    return write_dataset(
        out, (read_table_session(session, base, config) for session in spec.sessions),
        attrs={"title": spec.title, "source": spec.source, "converter": f"encoders prepare table {Path(config).name}"},
    )


# ---- the config -----------------------------------------------------------------------------------
def load_config(path: str | Path, root: str | None = None) -> tuple[TableImport, Path]:
    """The checked config and the folder its paths are relative to; nothing is read but the YAML."""
    from encoders.cli import check_config_keys
    from encoders.yaml_files import load_yaml_file

    path = Path(path)
    raw = load_yaml_file(path)  # one line naming the file: missing, not YAML, a key given twice
    check_config_keys(_parser(TableImport, None), path)  # unknown top-level keys, in the words of every other command
    if not isinstance(raw, dict) or not isinstance(raw.get("sessions"), list) or not raw["sessions"]:
        raise DatasetError(path, "needs a list of session blocks under `sessions`", field="sessions")
    sessions = []
    for number, block in enumerate(raw["sessions"], 1):
        sid = str(block.get("id", f"#{number}")) if isinstance(block, dict) else f"#{number}"
        if not isinstance(block, dict):
            raise DatasetError(path, "a session block must be a mapping", session=sid)
        _check_keys(SessionSpec, block, path, sid)
        sessions.append(_parse(SessionSpec, block, path, sid))
    config = _parse(TableImport, {**raw, "sessions": []}, path)
    config.sessions = sessions
    base = Path(root) if root is not None else path.parent / config.root
    if not base.is_dir():
        raise DatasetError(path, f"root folder {base} not found", field="root")
    _check(config, path, base)
    return config, base


def _parser(cls: type, nested: str | None = "value"):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_class_arguments(cls, nested)
    return parser


def _parse(cls: type, mapping: dict, path: Path, session: str | None = None):
    """`mapping` as a `cls` instance, typed by jsonargparse; a bad value is one line naming the file and session."""
    from jsonargparse import ArgumentError

    from encoders.errors import one_line

    parser = _parser(cls)
    try:
        return parser.instantiate(parser.parse_object({"value": mapping})).value
    except (ArgumentError, TypeError, ValueError) as error:
        message = one_line(error).replace('"value.', '"')
        keyed = re.fullmatch(r'Parser key "([^"]+)": (.*)', message)  # jsonargparse names the key: make it the field
        raise DatasetError(path, keyed[2] if keyed else message, session=session, field=keyed[1] if keyed else None) from None


def _check_keys(cls: type, mapping: dict, path: Path, session: str, prefix: str = "") -> None:
    """Unknown keys of a session block (and its nested blocks), by the dataclasses' fields."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in mapping.items():
        if key not in names:
            raise DatasetError(path, f"unknown key; allowed: {names}", session=session, field=f"{prefix}{key}")
        nested = [t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):
            _check_keys(nested[0], value, path, session, f"{prefix}{key}.")


def _check(config: TableImport, path: Path, base: Path) -> None:
    """Every value and path of every session, before anything is read in bulk."""
    seen = set()
    for spec in config.sessions:
        sid = str(spec.id)

        def fail(field: str, problem: str) -> DatasetError:
            return DatasetError(path, problem, session=sid, field=field)

        if sid in seen:
            raise fail("id", "two sessions have this id")
        if not sid or "/" in sid:
            raise fail("id", "must be a non-empty string without '/'")
        seen.add(sid)
        problems = [(f"images.{f}", p) for f, p in spec.images.problems(base)]
        for name, block in (("responses", spec.responses), ("trials", spec.trials)):
            if block is not None:
                problems += [(f"{name}.{f}", p) for f, p in block.problems(base)]
        if spec.responses.units is None:
            problems.append(("responses.units", f"declare the units: one of {list(UNITS)}"))
        if spec.trials is not None:
            if spec.trials.units not in (None, spec.responses.units):
                problems.append(("trials.units", f"{spec.trials.units} differs from the responses' {spec.responses.units}"))
            if spec.responses.per_trial:
                problems.append(("responses.layout", "with a trials block, responses must be averaged (per_image, or no repeat axis)"))
            if spec.trials.per_trial is False:
                problems.append(("trials", "must hold single trials: layout: per_trial, or an array with a repeat axis"))
        if split_problem := spec.split.problem():
            problems.append((f"split.{split_problem[0]}", split_problem[1]))
        for name, meta in (("neuron_meta", spec.neuron_meta), ("image_meta", spec.image_meta)):
            if meta is not None:
                meta_path = base / meta.file
                if meta_path.suffix.lower() not in TABLE_SUFFIXES:
                    problems.append((f"{name}.file", f"{meta_path}: must end in one of {', '.join(TABLE_SUFFIXES)}"))
                elif not meta_path.is_file():
                    problems.append((f"{name}.file", f"{meta_path}: file not found"))
                elif meta_path.suffix.lower() == ".parquet":
                    problems += [(f"{name}.file", p) for _, p in _pyarrow_problem()]
                if isinstance(meta.columns, str):
                    problems += [(f"{name}.{f}", p) for f, p in _regex_problem(meta.columns, "columns")]
        reserved = sorted(set(spec.attrs) & set(RESERVED_ATTRS))
        if reserved:
            problems.append(("attrs", f"{reserved} are set by the import; use other names"))
        if problems:
            raise fail(*problems[0])


def _pyarrow_problem() -> Iterator[tuple[str, str]]:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        yield "file", "reading .parquet needs pyarrow: pip install 'encoders[table]'"


def _regex_problem(pattern: str, name: str) -> Iterator[tuple[str, str]]:
    try:
        re.compile(pattern)
    except re.error as error:
        yield name, f"not a regular expression: {error}"


# ---- reading one session ----------------------------------------------------------------------------
@dataclass
class _Block:
    """A response file read and aligned to the session's images."""

    values: np.ndarray  # (image, neuron), or (image, repeat, neuron) when `repeats`
    neuron_ids: list[str]
    repeats: bool
    tiers: np.ndarray | None = None  # per image, from the split's tier column of a table
    source_row: np.ndarray | None = None  # arrays: each neuron's index in the file


def read_table_session(spec: SessionSpec, base: Path, config: str | Path) -> SessionData:
    """One session of a checked config (`load_config`) as `SessionData`."""
    sid = str(spec.id)
    image_ids, images = read_images(spec.images, base, sid)
    units = spec.responses.units
    main = _read_block(spec.responses, "responses", base, sid, image_ids, spec.split.column, units)
    extra = _read_block(spec.trials, "trials", base, sid, image_ids, spec.split.column, units) if spec.trials else None
    if main.repeats:
        if extra is not None:
            raise DatasetError(base / spec.responses.file, "has a repeat axis; with a trials block, responses must be averaged",
                               session=sid, field="responses.axes")
        trials, responses = main.values, _average(main, image_ids, base / spec.responses.file, sid)
    else:
        trials, responses = None, main.values
        if extra is not None:
            path = base / spec.trials.file
            if not extra.repeats:
                raise DatasetError(path, f"has shape {extra.values.shape}, no repeat axis: trials need [image, repeat, neuron] "
                                   "(declare axes)", session=sid, field="trials.axes")
            by_name = spec.responses.is_table and spec.trials.is_table  # else the neurons match by position
            if extra.neuron_ids != main.neuron_ids if by_name else len(extra.neuron_ids) != len(main.neuron_ids):
                raise DatasetError(path, f"has {len(extra.neuron_ids)} neurons ({extra.neuron_ids[:3]}...) but the responses have "
                                   f"{len(main.neuron_ids)} ({main.neuron_ids[:3]}...); they must agree", session=sid, field="trials")
            trials = extra.values
    image_meta, given_tiers = _image_meta(spec, base, sid, image_ids)
    given_tiers = next((t for t in (main.tiers, extra.tiers if extra else None, given_tiers) if t is not None), None)
    if spec.split.column is not None and given_tiers is None:
        raise DatasetError(config, f"tier column {spec.split.column!r} is in neither the responses table nor the image_meta table",
                           session=sid, field="split.column")
    n_repeats = (~np.isnan(trials)).any(axis=2).sum(axis=1) if trials is not None else None
    try:
        tiers, split = assign_tiers(spec.split, sid, len(image_ids), n_repeats, given_tiers)
    except ValueError as error:
        raise DatasetError(config, str(error), session=sid, field=f"split.{spec.split.column or 'test_fraction'}") from None
    neuron_meta = {"source_row": main.source_row} if main.source_row is not None else {}
    if spec.neuron_meta is not None:
        neuron_meta.update(_meta_columns(spec.neuron_meta, base, sid, np.array(main.neuron_ids), "neuron_meta", exclude=set()))
    window = spec.responses.window
    files = [f"images {spec.images.path}", f"responses {spec.responses.file}"] + ([f"trials {spec.trials.file}"] if spec.trials else [])
    attrs = {
        "units": f"{UNITS[units]}{f' in a {window} window' if window else ''}, averaged over repeats",
        "response_units": units,
        "spike_counts": int(units == "spike_counts"),
        "image_bits": spec.images.bits,
        "provenance": f"encoders prepare table {Path(config).name}: " + ", ".join(files),
        "split": split,
        **({"window": window} if window else {}),
        **({"image_scale": "16-bit values / 257, float32 0..255"} if spec.images.bits == 16 else {}),
        **spec.attrs,
    }
    return SessionData(session_id=sid, images=images, image_ids=image_ids, responses=responses, tiers=tiers,
                       neuron_ids=np.array(main.neuron_ids), trials=trials, neuron_meta=neuron_meta, attrs=attrs,
                       image_meta=image_meta)


def _read_block(src: ResponseSource, name: str, base: Path, sid: str, image_ids: np.ndarray, tier_column: str | None,
                units: str) -> _Block:
    path = base / src.file
    block = _table_block(src, path, sid, image_ids, tier_column) if src.is_table else _array_block(src, path, sid, image_ids, name)
    if units == "spike_counts" and (block.values < 0).any():
        flat = np.argwhere(block.values < 0)[0]
        where = f"column {block.neuron_ids[flat[-1]]!r}" if src.is_table else f"neuron {block.neuron_ids[flat[-1]]!r}"
        raise DatasetError(path, f"has {int((block.values < 0).sum())} negative values (e.g. image id {image_ids[flat[0]]}, "
                           f"{where}) but units: spike_counts is declared", session=sid,
                           field=block.neuron_ids[flat[-1]] if src.is_table else name)
    return block


def _table_block(src: ResponseSource, path: Path, sid: str, image_ids: np.ndarray, tier_column: str | None) -> _Block:
    def fail(problem: str, field: str) -> DatasetError:
        return DatasetError(path, problem, session=sid, field=field)

    frame = read_table(path, sid)
    id_column = src.image_column or "image_id"
    if id_column not in frame:
        raise fail(f"no such column; the columns are {list(frame.columns)[:12]}", id_column)
    columns = _select(frame, src.neurons.columns, {id_column, tier_column}, lambda p: fail(p, "neurons.columns"))
    values = np.empty((len(frame), len(columns)))
    for j, column in enumerate(columns):
        values[:, j] = _numbers(frame[column], lambda p, c=column: fail(p, c))
    row_ids = _whole_numbers(frame[id_column], lambda p: fail(p, id_column))
    pos = _positions(row_ids, image_ids, lambda p: fail(p, id_column))
    per_trial = src.layout == "per_trial"
    if per_trial:
        repeat = pd.Series(pos).groupby(pos).cumcount().to_numpy()
        out = np.full((len(image_ids), repeat.max() + 1, len(columns)), np.nan)
        out[pos, repeat] = values
    else:
        repeated = np.bincount(pos, minlength=len(image_ids)) > 1
        if repeated.any():
            raise fail(f"image id {image_ids[repeated][0]} has several rows; one row per trial needs layout: per_trial", id_column)
        missing = np.isnan(values)
        if missing.any():
            row, j = np.argwhere(missing)[0]
            raise fail(f"has {int(missing[:, j].sum())} missing values (e.g. data row {row + 1}, image id {row_ids[row]}); "
                       "averaged responses must be complete", columns[j])
        out = np.empty((len(image_ids), len(columns)))
        out[pos] = values
    tiers = None
    if tier_column is not None and tier_column in frame:
        labels = frame[tier_column].astype(str).to_numpy()
        tiers = np.empty(len(image_ids), dtype=object)
        tiers[pos] = labels
        _check_tier_labels(labels, lambda p: fail(p, tier_column))
        differ = tiers[pos] != labels
        if differ.any():
            raise fail(f"image id {row_ids[differ][0]} has rows with different tiers", tier_column)
    return _Block(out, [str(c) for c in columns], per_trial, tiers)


def _array_block(src: ResponseSource, path: Path, sid: str, image_ids: np.ndarray, name: str) -> _Block:
    def fail(problem: str, field: str = name) -> DatasetError:
        return DatasetError(path, problem, session=sid, field=field)

    array = load_array(path, src.key, session=sid, field=name)
    axes = src.axes or {2: ["image", "neuron"], 3: ["image", "repeat", "neuron"]}.get(array.ndim, [])
    if array.ndim != len(axes):
        raise fail(f"has shape {array.shape}, which does not fit axes {axes or '[image, neuron] or [image, repeat, neuron]'}",
                   f"{name}.axes")
    if array.dtype.kind not in "uif":
        raise fail(f"dtype {array.dtype} is not a number type")
    order = [axes.index(a) for a in ("image", "repeat", "neuron") if a in axes]
    shape, array = array.shape, np.ascontiguousarray(np.transpose(array, order))
    array = array if array.dtype.kind == "f" else array.astype(np.float64)
    if src.image_id_offset is None:
        if array.shape[0] != len(image_ids):
            raise fail(f"has {array.shape[0]} images along its image axis (shape {shape}, "
                       f"axes {axes}) but the session has {len(image_ids)} images")
        values = array
    else:
        pos = _positions(np.arange(array.shape[0]) + src.image_id_offset, image_ids, lambda p: fail(p, f"{name}.image_id_offset"))
        values = np.empty((len(image_ids), *array.shape[1:]), dtype=array.dtype)
        values[pos] = array
    if "repeat" not in axes and np.isnan(values).any():
        raise fail(f"has {int(np.isnan(values).sum())} NaN values; averaged responses must be complete")
    n_neurons = array.shape[-1]
    try:
        neuron_ids = [src.neurons.id_format.format(session=sid, i=i) for i in range(n_neurons)]
    except (KeyError, IndexError, ValueError) as error:
        raise fail(f"{src.neurons.id_format!r} is not a format string of session and i ({error})", f"{name}.neurons.id_format") from None
    return _Block(values, neuron_ids, "repeat" in axes, source_row=np.arange(n_neurons, dtype=np.int64))


def _check_tier_labels(labels: np.ndarray, fail) -> None:
    unknown = sorted(set(labels.tolist()) - set(TIERS))
    if unknown:
        raise fail(f"unknown tier(s) {unknown[:5]}; allowed: {list(TIERS)}")


def _average(block: _Block, image_ids: np.ndarray, path: Path, sid: str) -> np.ndarray:
    """Mean over the repeats present; every image needs at least one trial of every neuron."""
    empty = np.isnan(block.values).all(axis=1)
    if empty.any():
        i, j = np.argwhere(empty)[0]
        raise DatasetError(path, f"image id {image_ids[i]} has no trial value for neuron {block.neuron_ids[j]!r}",
                           session=sid, field=block.neuron_ids[j])
    return np.nanmean(block.values, axis=1)


def _image_meta(spec: SessionSpec, base: Path, sid: str, image_ids: np.ndarray) -> tuple[dict, np.ndarray | None]:
    """Per-image metadata, and the tier column when the split's column is there."""
    if spec.image_meta is None:
        return {}, None
    column = spec.split.column
    meta = _meta_columns(spec.image_meta, base, sid, image_ids, "image_meta", exclude={column} if column else set(),
                         keep=column)
    tiers = meta.pop(column, None) if column else None
    return meta, tiers


def _meta_columns(meta: MetaTable, base: Path, sid: str, ids: np.ndarray, name: str, exclude: set,
                  keep: str | None = None) -> dict[str, np.ndarray]:
    """The chosen columns of a metadata table, in the order of `ids` (every id needs a row; extra rows are unused)."""
    path = base / meta.file

    def fail(problem: str, field: str) -> DatasetError:
        return DatasetError(path, problem, session=sid, field=field)

    frame = read_table(path, sid)
    if meta.id_column not in frame:
        raise fail(f"no such column; the columns are {list(frame.columns)[:12]}", f"{name}.id_column")
    if name == "image_meta":
        keys = _whole_numbers(frame[meta.id_column], lambda p: fail(p, meta.id_column))
    else:
        keys = frame[meta.id_column].astype(str).to_numpy()
    index = pd.Index(keys)
    if index.has_duplicates:
        raise fail(f"id {index[index.duplicated()][0]!r} has several rows", meta.id_column)
    pos = index.get_indexer(ids)
    if (pos < 0).any():
        raise fail(f"{int((pos < 0).sum())} {name.split('_')[0]} id(s) have no row, e.g. {ids[pos < 0][0]!r}", meta.id_column)
    columns = _select(frame, meta.columns, {meta.id_column} | exclude, lambda p: fail(p, f"{name}.columns"), allow_empty=True)
    if keep is not None and keep in frame:
        columns.append(keep)
        _check_tier_labels(frame[keep].astype(str).to_numpy(), lambda p: fail(p, keep))
    out = {}
    for column in columns:
        values = frame[column].to_numpy()[pos]
        numeric = pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column])
        out[str(column)] = values if numeric else values.astype(str)
    return out


# ---- tables ------------------------------------------------------------------------------------------
def read_table(path: Path, session: str | None = None) -> pd.DataFrame:
    """A .csv, .tsv or .parquet table (column names as str); one-line errors naming the file."""
    try:
        if path.suffix.lower() == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DatasetError(path, "reading .parquet needs pyarrow: pip install 'encoders[table]'", session=session) from None
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except DatasetError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, ImportError) as error:  # pandas' and pyarrow's parse errors are ValueErrors
        raise DatasetError(path, f"not a readable table ({type(error).__name__}: {error})", session=session) from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _select(frame: pd.DataFrame, chosen: str | list[str] | None, exclude: set, fail, allow_empty: bool = False) -> list[str]:
    """Columns named by a list, matched by a regex (whole names), or all but `exclude`."""
    if isinstance(chosen, list):
        absent = [c for c in chosen if c not in frame]
        if absent:
            raise fail(f"no column(s) {absent[:5]}; the columns are {list(frame.columns)[:12]}")
        return list(chosen)
    columns = [c for c in frame.columns if c not in exclude and (chosen is None or re.fullmatch(chosen, c))]
    if not columns and not allow_empty:
        raise fail(f"no column matches {chosen!r}; the columns are {list(frame.columns)[:12]}" if chosen else "no neuron columns")
    return columns


def _numbers(column: pd.Series, fail) -> np.ndarray:
    """A neuron column as float64; text or other non-numbers are refused, naming a value."""
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        converted = pd.to_numeric(column, errors="coerce")
        bad = np.flatnonzero(converted.isna().to_numpy() & column.notna().to_numpy())
        if len(bad) or pd.api.types.is_bool_dtype(column):
            value = column.iloc[bad[0]] if len(bad) else column.iloc[0]
            raise fail(f"is not numeric (data row {(bad[0] if len(bad) else 0) + 1}: {value!r})")
        column = converted
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def _whole_numbers(column: pd.Series, fail) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    if len(bad):
        raise fail(f"image ids must be whole numbers (data row {bad[0] + 1}: {column.iloc[bad[0]]!r})")
    return values.astype(np.int64)


def _positions(ids: np.ndarray, image_ids: np.ndarray, fail) -> np.ndarray:
    """Where each id is among the session's images; ids without an image, and images without an id, are refused."""
    pos = pd.Index(image_ids).get_indexer(ids)
    if (pos < 0).any():
        unknown = np.unique(ids[pos < 0])
        raise fail(f"{len(unknown)} image id(s) have no image file, e.g. {unknown[:5].tolist()}")
    absent = np.bincount(pos, minlength=len(image_ids)) == 0
    if absent.any():
        raise fail(f"{int(absent.sum())} image(s) have no responses here, e.g. image id(s) {image_ids[absent][:5].tolist()}")
    return pos

