"""Import NWB files (Neurodata Without Borders, how recordings are shared on DANDI): one file per session.

Two layouts of the stimulus:

- images in the file: `stimulus` holds an `IndexSeries` whose data index an `Images` container in
  `stimulus_template` (ordered by its `order_of_images`) and whose timestamps are the presentation
  onsets; or an `OpticalSeries` whose frames are the presented images (identical frames are the same
  image, numbered in order of first appearance). The image id is the index into the container.
  (Older files whose IndexSeries points at an ImageSeries of frames, `indexed_timeseries`, are read too.)
- images outside the file: a column of the trials table (or another intervals table) gives each
  presentation's stimulus id, joined to a folder, zip or array of images whose file names hold the ids
  (`encoders.datasets.image_files`).

Responses: the spikes of each unit (`Units.spike_times`) counted in the window
[onset + latency, onset + latency + duration) after each presentation's onset: the start is inclusive,
the end exclusive, so a spike on the boundary of two back-to-back windows counts once. Repeated
presentations of an image become `trials` (image, repeat, neuron) in presentation order, NaN-padded;
`responses` is their mean. Presentations with a negative or NaN image id or a NaN onset (blanks) are
skipped; images never presented are not stored. pynwb is an optional extra (`encoders[nwb]`).
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.datasets.image_files import ImageSource, read_images
from encoders.datasets.io import write_dataset
from encoders.datasets.schema import SessionData
from encoders.datasets.splits import SplitRule, assign_tiers
from encoders.errors import DatasetError, EncodersError

PYNWB_MISSING = "prepare nwb needs pynwb: pip install 'encoders[nwb]'"
_FILTER = re.compile(r"^\s*(\w+)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


def import_pynwb():
    """The pynwb module, or an EncodersError saying how to install it."""
    try:
        import pynwb
    except ImportError:
        raise EncodersError(PYNWB_MISSING) from None
    return pynwb


def nwb_files(nwb: str | list[str]) -> list[Path]:
    """The files named: a file, a list of files, or a folder (every *.nwb beneath it, sorted)."""
    paths = []
    for item in [nwb] if isinstance(nwb, str) else nwb:
        item = Path(item)
        paths += sorted(item.rglob("*.nwb")) if item.is_dir() else [item]
    if not paths:
        raise DatasetError(nwb, "no .nwb files found")
    return paths


def convert_nwb(
    nwb: str | list[str],
    out: str,
    images: ImageSource | None = None,
    table: str = "trials",
    stimulus_column: str | None = None,
    onset: str | None = None,
    latency: float = 0.05,
    duration: float = 0.1,
    series: str | None = None,
    unit_filter: str | None = None,
    neuron_id_column: str | None = None,
    split: SplitRule = SplitRule(),
) -> list[str]:
    """Import NWB files (one session each, named by the file's stem) into one dataset file, atomically.

    Args:
        nwb: an NWB file, a folder (every .nwb file beneath it) or a list of files
        out: the dataset file to write (.h5)
        images: the stimuli when the file holds none (`encoders.datasets.image_files.ImageSource`): a folder,
            zip or array file, ids from the file names (`pattern`) or array positions
        table: the intervals table of presentations ("trials", or another table in `intervals`)
        stimulus_column: column of `table` with each presentation's stimulus id (images from `images`);
            when omitted, presentations come from the IndexSeries or OpticalSeries in `stimulus`
        onset: column of `table` with each presentation's onset in s (e.g. a photodiode time); default
            the presentation series' timestamps, or start_time with stimulus_column
        latency: seconds from onset to the start of the counting window
        duration: length of the counting window in seconds, > 0 (start inclusive, end exclusive)
        series: name of the presentation series in `stimulus` (needed when there are several)
        unit_filter: keep units by a Units column: "quality == good", "snr > 2", or a boolean column's name
        neuron_id_column: Units column with the neuron ids; default the Units table's ids
        split: the train/validation/test rule (`encoders.datasets.splits.SplitRule`): by default images shown
            more than once are the test tier and a seeded permutation splits the rest by the fractions;
            `column` names a column of `table` with each presentation's tier
    """
    import_pynwb()
    paths = nwb_files(nwb)
    options = dict(images=images, table=table, stimulus_column=stimulus_column, onset=onset, latency=latency,
                   duration=duration, series=series, unit_filter=unit_filter, neuron_id_column=neuron_id_column,
                   split=split)

    def generate() -> Iterator[SessionData]:
        cache: dict = {}
        for path in paths:
            yield read_nwb_session(path, cache, **options)

    return write_dataset(out, generate(), attrs={
        "title": "Spike counts imported from NWB",
        "source": ", ".join(p.name for p in paths),
        "converter": "encoders prepare nwb",
    })


def read_nwb_session(path: str | Path, cache: dict | None = None, **options) -> SessionData:
    """One NWB file as a session (options and defaults as `convert_nwb`'s; `cache` keeps external images between files)."""
    pynwb = import_pynwb()
    defaults = {name: p.default for name, p in inspect.signature(convert_nwb).parameters.items() if name not in ("nwb", "out")}
    unknown = sorted(set(options) - set(defaults))
    if unknown:  # a misspelt option would otherwise be carried along and never used
        raise TypeError(f"read_nwb_session: unknown option(s) {unknown}; options: {sorted(defaults)}")
    options = {**defaults, **options}
    path = Path(path)
    session = path.stem
    if not path.is_file():
        raise DatasetError(path, "file not found", session=session)

    def unreadable(error: Exception) -> DatasetError:
        return DatasetError(path, f"not a readable NWB file ({type(error).__name__}: {_first_line(error)})", session=session)

    try:
        io = pynwb.NWBHDF5IO(str(path), "r")
    except Exception as error:  # h5py, hdmf and pynwb each raise their own kinds for a broken file
        raise unreadable(error) from None
    with io:
        try:
            nwbfile = io.read()
        except Exception as error:
            raise unreadable(error) from None
        return _Reader(path, session, nwbfile, {} if cache is None else cache, **options).read()


@dataclass
class _Shown:
    """Presentations: image index (into `images`) and onset of each, the images, their ids, names for messages."""

    index: np.ndarray
    onsets: np.ndarray
    images: np.ndarray
    image_ids: np.ndarray
    onset_name: str
    field: str


class _Reader:
    """Reads one open NWB file; every error names the file, the session and the field."""

    def __init__(self, path: Path, session: str, nwbfile, cache: dict, **options):
        self.path, self.session, self.nwbfile, self.cache = path, session, nwbfile, cache
        self.o = options

    def error(self, problem: str, field: str) -> DatasetError:
        return DatasetError(self.path, problem, session=self.session, field=field)

    def read(self) -> SessionData:
        o = self.o
        if not o["duration"] > 0:
            raise self.error(f"the counting window must be longer than 0 s, got {o['duration']}", "duration")
        problem = o["split"].problem()
        if problem is not None:
            raise self.error(problem[1], f"split.{problem[0]}")
        units = self.nwbfile.units
        if units is None or "spike_times" not in units.colnames:
            raise self.error("the file has no Units table with spike_times", "units")
        shown = self.presentations()
        keep = (shown.index >= 0) & np.isfinite(shown.onsets)  # blanks and missing onsets are skipped
        if not keep.any():
            raise self.error("no presentations" + (" (every image index negative or onset NaN)" if len(keep) else ""),
                             shown.field)
        presented, image_of = np.unique(shown.index[keep], return_inverse=True)  # only images that were shown
        selected = self.selected_units(units)
        onsets = shown.onsets[keep]
        counts = count_spikes(units["spike_times"], selected, onsets + o["latency"], o["duration"])
        trials = _trials(image_of, onsets, counts, len(presented))
        tiers, split = self.split(image_of, len(presented), trials, keep)
        unit_ids = np.asarray(units.id[:], dtype=np.int64)[selected]
        neuron_ids = unit_ids if o["neuron_id_column"] is None else \
            _decode(self.column(units, o["neuron_id_column"], "neuron_id_column"))[selected]
        nwb = self.nwbfile
        attrs = {
            "units": f"spike counts in [{o['latency']:g}, {o['latency'] + o['duration']:g}) s after {shown.onset_name}",
            "spike_counts": 1,
            "latency_s": float(o["latency"]),
            "duration_s": float(o["duration"]),
            "provenance": f"{self.path.name}: identifier {nwb.identifier}, session_description {nwb.session_description!r}",
            "split": split,
        }
        if nwb.session_id:
            attrs["nwb_session_id"] = str(nwb.session_id)
        if nwb.subject is not None and nwb.subject.subject_id:
            attrs["animal"] = str(nwb.subject.subject_id)
        return SessionData(
            session_id=self.session,
            images=shown.images[presented],
            image_ids=shown.image_ids[presented],
            responses=np.nanmean(trials, axis=1),
            tiers=tiers,
            neuron_ids=neuron_ids.astype(str),
            trials=trials if trials.shape[1] > 1 else None,
            neuron_meta={"unit_id": unit_ids},
            attrs=attrs,
        )

    def split(self, image_of: np.ndarray, n_images: int, trials: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, str]:
        rule = self.o["split"]
        given = None
        if rule.column is not None:  # a tier per presentation; each image takes its first presentation's
            labels = _decode(self.per_presentation(rule.column, "split.column", len(keep)))[keep]
            given = np.empty(n_images, dtype=labels.dtype)
            given[image_of[::-1]] = labels[::-1]
            if (given[image_of] != labels).any():
                raise self.error("an image has presentations in different tiers", rule.column)
        repeats = (~np.isnan(trials[:, :, 0])).sum(axis=1)
        try:
            return assign_tiers(rule, self.session, n_images, repeats, given)
        except ValueError as error:
            hint = "; or use --split.repeats_to_test false" if rule.repeats_to_test and (repeats > 1).any() else ""
            raise self.error(f"{error}{hint}", rule.column or "split") from None

    # ---- presentations
    def presentations(self) -> _Shown:
        o = self.o
        if o["stimulus_column"] is not None:
            table = self.table()
            ids = self.column(table, o["stimulus_column"], "stimulus_column")
            onset = o["onset"] or "start_time"
            images, image_ids = self.external_images()
            return _Shown(self.join_ids(ids, image_ids, o["stimulus_column"]),
                          self.per_presentation(onset, "onset", len(ids)).astype(np.float64),
                          images, image_ids, onset, o["stimulus_column"])
        stimulus = self.presentation_series()
        index, images = self.series_images(stimulus)
        if o["onset"] is None:
            onsets, onset = np.asarray(stimulus.get_timestamps()[:], dtype=np.float64), f"{stimulus.name} timestamps"
        else:
            onsets, onset = self.per_presentation(o["onset"], "onset", len(index)).astype(np.float64), o["onset"]
        return _Shown(index, onsets, images, np.arange(len(images), dtype=np.int64), onset, stimulus.name)

    def per_presentation(self, name: str, option: str, n: int) -> np.ndarray:
        """A column of `table` with one row per presentation."""
        values = self.column(self.table(), name, option)
        if len(values) != n:
            raise self.error(f"{len(values)} rows in {self.o['table']!r} but {n} presentations", name)
        return values

    def presentation_series(self):
        pynwb = import_pynwb()
        kinds = (pynwb.image.IndexSeries, pynwb.image.ImageSeries)
        found = {name: s for name, s in self.nwbfile.stimulus.items() if isinstance(s, kinds)}
        name = self.o["series"]
        if name is not None:
            if name not in found:
                raise self.error(f"no IndexSeries or OpticalSeries {name!r} in stimulus; found {sorted(found)}", "series")
            return found[name]
        if len(found) != 1:
            problem = "several presentation series; choose one with --series" if found else \
                "no images in the file (no IndexSeries or OpticalSeries in stimulus); give --stimulus_column and --images"
            raise self.error(f"{problem} (found {sorted(found)})", "stimulus")
        return next(iter(found.values()))

    def series_images(self, stimulus) -> tuple[np.ndarray, np.ndarray]:
        """Image index per presentation and the images it indexes (pixels as stored, one array)."""
        pynwb = import_pynwb()
        if isinstance(stimulus, pynwb.image.IndexSeries):
            index = np.asarray(stimulus.data[:]).astype(np.int64)
            if stimulus.indexed_images is not None:
                order = stimulus.indexed_images.order_of_images
                if order is None:
                    raise self.error(f"Images {stimulus.indexed_images.name!r} has no order_of_images to index",
                                     "order_of_images")
                frames = [np.asarray(image.data[()]) for image in order.data[:]]
            else:  # older files: an ImageSeries of frames in stimulus_template
                frames = list(np.asarray(stimulus.indexed_timeseries.data[:]))
            if index.max(initial=-1) >= len(frames):
                raise self.error(f"indexes image {index.max()} of {len(frames)}", stimulus.name)
            return index, self.stack(frames, stimulus.name)
        frames = np.asarray(stimulus.data[:])  # an OpticalSeries: each frame one presentation
        if frames.ndim < 3:
            raise self.error(f"{stimulus.name!r} holds no frames (external_file is not read)", stimulus.name)
        first: dict[bytes, int] = {}
        index = np.array([first.setdefault(hashlib.blake2b(f.tobytes(), digest_size=16).digest(), len(first))
                          for f in frames], dtype=np.int64)
        unique = np.unique(index, return_index=True)[1]
        return index, self.stack(list(frames[unique]), stimulus.name)

    def stack(self, frames: list[np.ndarray], field: str) -> np.ndarray:
        """(image, y, x) or (image, 3, y, x); uint8 kept, anything else float32; alpha dropped."""
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise self.error(f"images differ in shape: {sorted(shapes)[:3]}", field)
        images = np.stack(frames)
        if images.ndim == 4:
            images = np.ascontiguousarray(images[..., :3].transpose(0, 3, 1, 2))
        return images if images.dtype == np.uint8 else images.astype(np.float32)

    def external_images(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, ids) of the `images` source, read once and shared by the files of one call."""
        source = self.o["images"]
        if source is None:
            raise self.error("with stimulus_column, give the stimulus images: --images.folder, --images.zip or "
                             "--images.array", "images")
        if "images" not in self.cache:
            self.cache["images"] = read_images(source, session=self.session, field="images")[::-1]
        return self.cache["images"]

    def join_ids(self, ids: np.ndarray, image_ids: np.ndarray, field: str) -> np.ndarray:
        """Index into the images of each presentation's stimulus id (-1 for a blank: NaN or negative)."""
        names = _decode(ids)
        ids = _as_int_ids(names)
        if ids is None and names.dtype.kind == "U":  # names such as "img_0007.png": ids by `images.pattern`
            pattern = re.compile(self.o["images"].pattern)
            found = [pattern.search(name) for name in names]
            if None in found:
                raise self.error(f"{names[found.index(None)]!r} holds no image id by pattern {pattern.pattern!r}", field)
            ids = _as_int_ids(np.array([m.group(1) for m in found]))
        if ids is None:
            raise self.error("stimulus ids must be whole numbers or names holding one (like the image file names)", field)
        order = np.argsort(image_ids)
        position = np.clip(np.searchsorted(image_ids[order], ids), 0, len(order) - 1)
        found = image_ids[order][position] == ids
        missing = np.unique(ids[~found & (ids >= 0)])
        if len(missing):
            raise self.error(f"{len(missing)} stimulus id(s) not among the images of {self.o['images'].path}: "
                             f"{missing[:5].tolist()}", field)
        return np.where(found, order[position], -1)

    # ---- units and tables
    def selected_units(self, units) -> np.ndarray:
        """Indices of the units that pass the filter."""
        n = len(units.id)
        if n == 0:
            raise self.error("the Units table has no units", "units")
        rule = self.o["unit_filter"]
        if rule is None:
            return np.arange(n)
        match = _FILTER.match(rule)
        name = match.group(1) if match else rule.strip()
        values = _decode(self.column(units, name, "unit_filter"))
        if match is None:
            if values.dtype.kind not in "biuf":
                raise self.error(f"column {name!r} is not boolean or numeric; compare it, e.g. \"{name} == good\"",
                                 "unit_filter")
            keep = values.astype(bool)
        else:
            op, value = match.group(2), match.group(3).strip("'\"")
            if values.dtype.kind not in "US":
                try:
                    value = float(value)
                except ValueError:
                    raise self.error(f"{rule!r}: column {name!r} is numeric, {value!r} is not", "unit_filter") from None
            keep = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
                    ">=": np.greater_equal}[op](values, value)
        if not keep.any():
            raise self.error(f"no unit passes {rule!r}", "unit_filter")
        return np.flatnonzero(keep)

    def table(self):
        name = self.o["table"]
        tables = dict(self.nwbfile.intervals or {})
        if name not in tables:
            raise self.error(f"no intervals table {name!r}; the file has {sorted(tables)}", "table")
        return tables[name]

    def column(self, table, name: str, option: str) -> np.ndarray:
        from hdmf.common import VectorIndex

        if name not in table.colnames:
            raise self.error(f"{table.name} has no column {name!r} (given as {option}); columns: "
                             f"{list(table.colnames)}", name)
        if isinstance(table[name], VectorIndex):
            raise self.error(f"{table.name} column {name!r} holds a list per row, not one value", name)
        return np.asarray(table[name].data[:])


def count_spikes(spike_times, units: np.ndarray, starts: np.ndarray, duration: float) -> np.ndarray:
    """(presentation, unit) spike counts in [start, start + duration): a binary search per unit over all windows.

    `spike_times` is the Units table's ragged column (a VectorIndex): each unit's spikes are read on
    their own from the file (sorted here if they were not).
    """
    ends = np.concatenate([[0], np.asarray(spike_times.data[:], dtype=np.int64)])
    data = spike_times.target.data
    counts = np.empty((len(starts), len(units)), dtype=np.float32)
    for column, unit in enumerate(units):
        spikes = np.sort(np.asarray(data[ends[unit] : ends[unit + 1]], dtype=np.float64))
        counts[:, column] = np.searchsorted(spikes, starts + duration) - np.searchsorted(spikes, starts)
    return counts


def _trials(image_of: np.ndarray, onsets: np.ndarray, counts: np.ndarray, n_images: int) -> np.ndarray:
    """(image, repeat, unit), repeats in order of onset, NaN where an image was shown fewer times."""
    order = np.lexsort((onsets, image_of))
    image = image_of[order]
    repeat = np.arange(len(order)) - np.searchsorted(image, image)  # rank within the image's presentations
    trials = np.full((n_images, repeat.max() + 1, counts.shape[1]), np.nan, dtype=np.float32)
    trials[image, repeat] = counts[order]
    return trials


def _as_int_ids(values: np.ndarray) -> np.ndarray | None:
    """Whole numbers as int64 (NaN -> -1, a blank), or None when the values are not all whole numbers."""
    try:
        numbers = values.astype(np.float64)
    except ValueError:
        return None
    numbers = np.where(np.isnan(numbers), -1, numbers)
    return numbers.astype(np.int64) if np.all(numbers == np.round(numbers)) else None


def _decode(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "O" and len(values) and isinstance(values[0], bytes):
        return np.array([v.decode() for v in values])
    return values.astype(str) if values.dtype.kind == "O" else values


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]
