"""Stimulus images from files: a folder or zip archive of PNG/JPEG/TIFF files, or an array file.

- folder / zip: files named *.png, *.jpg, *.jpeg, *.tif, *.tiff (any case; hidden files and
  `__MACOSX/` are skipped); the image id is the one group of `pattern`, searched in the file name
  (not its folder), e.g. `img_(\\d+)\\.png`; files whose name does not match are not images of the set.
- array: a .npy file, a member of a .npz file (`key`), or a dataset of an HDF5 file (`key`), of
  shape (image, y, x) or (image, y, x, channel), or other `axes`; image id = index + `id_offset`.

Output, in the schema's pixel space (`encoders.datasets.schema`), sorted by image id: 8-bit sources
give uint8 (0..255); 16-bit sources give float32 scaled to 0..255 (value / 257), so models see the
same range either way; float arrays are kept as float32 values. Grey images are (image, y, x),
colour ones (image, 3, y, x). `bits` (8 or 16) is checked against every file, grey/colour mixing
needs a declared `channels`, and images of different sizes need a `size` with a `fit` rule.
PIL reads 16-bit colour files at 8 bits, so those are refused (16-bit grey is read exactly).
Every problem raises one `DatasetError` naming the file (and the session and field when given).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from encoders.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".nc")
SIXTEEN_BIT_SCALE = 257.0  # 65535 / 255: 16-bit values divided by this are 0..255 floats
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class ImageSource:
    """A session's stimulus images; give exactly one of `folder`, `zip` or `array`.

    Args:
        folder: folder of PNG/JPEG/TIFF files.
        zip: zip archive of such files (entries in sub-folders too).
        array: .npy, .npz or HDF5 file holding all images in one array.
        key: the member of a .npz file or the dataset path in an HDF5 file (a .npz with one member needs none).
        pattern: regular expression with one group, searched in each file name: the group is the image id.
        id_offset: arrays only: image id = index + id_offset.
        axes: arrays only: the array's axes, a permutation of image, y, x (and channel); default
            [image, y, x] or [image, y, x, channel].
        bits: bit depth of the files (8 or 16), checked against each file.
        channels: 1 (grey) or 3 (colour): convert every image to it; by default all must be alike.
        size: [height, width] every image is brought to with `fit`; by default all must have one size.
        fit: resize (bilinear with antialiasing, aspect ratio not kept) or center_crop (to `size`).
    """

    folder: str | None = None
    zip: str | None = None
    array: str | None = None
    key: str | None = None
    pattern: str = r"(\d+)"
    id_offset: int = 0
    axes: list[Literal["image", "channel", "y", "x"]] | None = None
    bits: Literal[8, 16] = 8
    channels: Literal[1, 3] | None = None
    size: tuple[int, int] | None = None
    fit: Literal["resize", "center_crop"] | None = None

    @property
    def path(self) -> str:
        return self.folder or self.zip or self.array or ""

    def problems(self, base: Path = Path(".")) -> Iterator[tuple[str, str]]:
        """(field, problem) for each bad option, without reading any image; paths are relative to `base`."""
        given = [name for name in ("folder", "zip", "array") if getattr(self, name)]
        if len(given) != 1:
            yield "folder", f"give exactly one of folder, zip or array (got {given or 'none'})"
            return
        kind, path = given[0], base / self.path
        if kind == "folder" and not path.is_dir():
            yield "folder", f"{path}: folder not found"
        if kind != "folder" and not path.is_file():
            yield kind, f"{path}: file not found"
        if kind == "array" and path.suffix.lower() not in ARRAY_SUFFIXES:
            yield "array", f"{path}: must end in one of {', '.join(ARRAY_SUFFIXES)}"
        if kind == "array" and path.suffix.lower() in (".h5", ".hdf5", ".nc") and not self.key:
            yield "key", "an HDF5 array file needs the dataset path as key"
        if kind == "array" and (self.size or self.fit):
            yield "size", "size and fit apply to image files; an array has one size"
        if kind == "array" and self.axes and (sorted(self.axes) not in (sorted(["image", "y", "x"]), sorted(["image", "channel", "y", "x"]))):
            yield "axes", f"must be a permutation of image, y, x (and channel), got {self.axes}"
        if kind != "array" and self.axes:
            yield "axes", "applies to arrays only"
        try:
            groups = re.compile(self.pattern).groups
            if groups != 1:
                yield "pattern", f"must have exactly one group (the image id), {self.pattern!r} has {groups}"
        except re.error as error:
            yield "pattern", f"not a regular expression: {error}"
        if (self.size is None) != (self.fit is None):
            yield "size" if self.size is None else "fit", "size and fit go together: give both or neither"
        if self.size is not None and min(self.size) < 1:
            yield "size", f"height and width must be at least 1, got {list(self.size)}"


def read_image_files(path: str | Path, **options) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, images) of a folder, zip or array file; `options` are those of `ImageSource`."""
    path = Path(path)
    kind = "folder" if path.is_dir() else "zip" if path.suffix.lower() == ".zip" else "array"
    return read_images(ImageSource(**{kind: str(path)}, **options))


def read_images(source: ImageSource, base: str | Path = ".", session: str | None = None,
                field: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """(image ids, int64 ascending; images in pixel space, see the module doc) of one source.

    Paths are relative to `base`; errors name the file, and `session` and `field` when given.
    """
    for name, problem in source.problems(Path(base)):
        raise DatasetError(Path(base) / source.path, problem, session=session, field=f"{field}.{name}")
    path = Path(base) / source.path
    if source.array:
        return _from_array(source, path, session, field)
    if source.folder:
        names = sorted(entry.name for entry in os.scandir(path) if entry.is_file())
        ids, chosen = _numbered(names, source.pattern, path, session, field)
        return ids, _decode_all(source, chosen, lambda name: path / name, path, session, field)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(path, f"not a readable zip file: {error}", session=session, field=field) from None
    with archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        ids, chosen = _numbered(names, source.pattern, path, session, field)

        def member(name: str) -> io.BytesIO:
            try:
                return io.BytesIO(archive.read(name))
            except (zipfile.BadZipFile, OSError, EOFError) as error:  # CRC error, truncated archive
                raise DatasetError(f"{path}:{name}", f"unreadable zip entry: {error}", session=session, field=field) from None

        return ids, _decode_all(source, chosen, member, path, session, field)


def _numbered(names: list[str], pattern: str, where: Path, session: str | None, field: str) -> tuple[np.ndarray, list[str]]:
    """Image ids (ascending) and the names holding them; empty sets and duplicate ids are refused."""
    regex = re.compile(pattern)
    found: dict[int, str] = {}
    for name in names:
        stem = name.rsplit("/", 1)[-1]
        if stem.startswith(".") or name.startswith("__MACOSX/") or not stem.lower().endswith(IMAGE_SUFFIXES):
            continue
        match = regex.search(stem)
        if match is None:
            continue
        try:
            image_id = int(match.group(1))
        except (TypeError, ValueError):
            raise DatasetError(where / name, f"pattern {pattern!r} gives image id {match.group(1)!r}, not a whole number",
                               session=session, field=f"{field}.pattern") from None
        if image_id in found:
            raise DatasetError(where, f"image id {image_id} is given by two files, {found[image_id]} and {name}",
                               session=session, field=field)
        found[image_id] = name
    if not found:
        raise DatasetError(where, f"no image files ({', '.join(IMAGE_SUFFIXES)}) whose name matches pattern {pattern!r}",
                           session=session, field=field)
    ids = np.array(sorted(found), dtype=np.int64)
    return ids, [found[i] for i in ids]


def _decode_all(source: ImageSource, names: list[str], opener, where: Path, session: str | None, field: str) -> np.ndarray:
    """Decode every file into one preallocated array; the first file sets size and channels unless declared."""
    out = None
    first = names[0]
    for index, name in enumerate(names):
        name_path = Path(f"{where}:{name}") if source.zip else where / name
        pixels = _decode(opener(name), source, name_path, session, field)
        if out is None:
            out = np.empty((len(names), *pixels.shape), dtype=pixels.dtype)
        elif pixels.shape != out.shape[1:]:
            what = "colour" if pixels.ndim == 3 else "grey"
            first_what = "colour" if out.ndim == 4 else "grey"
            problem = (f"is {what} but {first} is {first_what}; declare channels: 1 or 3" if what != first_what else
                       f"is {pixels.shape[-2]}x{pixels.shape[-1]} (height x width) but {first} is "
                       f"{out.shape[-2]}x{out.shape[-1]}; give size: [height, width] with fit: resize or center_crop")
            raise DatasetError(name_path, problem, session=session, field=field)
        out[index] = pixels
    return out


def _decode(file, source: ImageSource, name: Path, session: str | None, field: str) -> np.ndarray:
    """One image file as (y, x) or (3, y, x): uint8 for 8-bit files, float32 0..255 for 16-bit ones."""
    def fail(problem: str) -> DatasetError:
        return DatasetError(name, problem, session=session, field=field)

    try:
        with Image.open(file) as image:
            rawmodes = [t.args[0] if isinstance(t.args, tuple) else t.args for t in image.tile]
            sixteen = image.mode in _GREY_MODES[3:] or any(";16" in str(mode) for mode in rawmodes)
            image.load()
            grey = image.mode in _GREY_MODES
            if sixteen != (source.bits == 16):
                raise fail(f"is a {16 if sixteen else 8}-bit image but bits: {source.bits} is declared")
            if sixteen and not grey:
                raise fail("is a 16-bit colour image, which PIL reads at 8 bits only; convert it to 16-bit grey or 8-bit colour")
            if image.mode == "F":
                raise fail("is a floating-point image; give 8- or 16-bit images, or an array file")
            channels = source.channels or (1 if grey else 3)
            if sixteen:
                values = np.asarray(image).astype(np.float32)
                if channels == 3:
                    values = np.repeat(values[..., None], 3, axis=2)
                values /= SIXTEEN_BIT_SCALE
                planes = [Image.fromarray(values[..., c]) for c in range(channels)] if channels == 3 else [Image.fromarray(values)]
                pixels = np.stack([np.asarray(_fit(p, source, fail), dtype=np.float32) for p in planes], axis=-1)
                pixels = pixels[..., 0] if channels == 1 else pixels
            else:
                mode = "L" if channels == 1 else "RGB"
                pixels = np.asarray(_fit(image if image.mode == mode else image.convert(mode), source, fail))
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # not an image, truncated, corrupt
        raise fail(f"not a readable image ({type(error).__name__}: {error})") from None
    return pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels


def _fit(image: Image.Image, source: ImageSource, fail) -> Image.Image:
    if source.size is None:
        return image
    height, width = source.size
    if source.fit == "resize":
        return image.resize((width, height), Image.Resampling.BILINEAR) if image.size != (width, height) else image
    if image.width < width or image.height < height:
        raise fail(f"is {image.height}x{image.width} (height x width), smaller than the center_crop size {height}x{width}")
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def _from_array(source: ImageSource, path: Path, session: str | None, field: str) -> tuple[np.ndarray, np.ndarray]:
    def fail(problem: str, name: str = field) -> DatasetError:
        return DatasetError(path, problem, session=session, field=name)

    array = load_array(path, source.key, session=session, field=field)
    axes = source.axes or (["image", "y", "x"] if array.ndim == 3 else ["image", "y", "x", "channel"])
    if array.ndim != len(axes):
        raise fail(f"has shape {array.shape}, which does not fit axes {axes}", f"{field}.axes")
    array = np.moveaxis(array, [axes.index(a) for a in ("image", "y", "x")], [0, 1, 2])  # channel, if any, last
    if array.ndim == 4 and array.shape[3] not in (1, 3):
        raise fail(f"has {array.shape[3]} channels; images need 1 (grey) or 3 (colour)", f"{field}.axes")
    if array.dtype.kind in "ui":
        sixteen = array.dtype.itemsize > 1
        if sixteen != (source.bits == 16) or array.dtype.kind == "i" and array.size and array.min() < 0:
            raise fail(f"holds {array.dtype} values but bits: {source.bits} is declared (uint8 for 8, uint16 for 16)")
        if sixteen and array.size and array.max() > 65535:
            raise fail(f"holds values up to {array.max()}, more than 16 bits")
        array = array.astype(np.float32) / SIXTEEN_BIT_SCALE if sixteen else array.astype(np.uint8, copy=False)
    elif array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)  # taken as pixel values (0..255) as they are
    else:
        raise fail(f"dtype {array.dtype} is not a number type")
    grey = array.ndim == 3 or array.shape[3] == 1
    array = array[..., 0] if array.ndim == 4 and grey else array
    channels = source.channels or (1 if grey else 3)
    if channels == 3 and grey:
        array = np.repeat(array[..., None], 3, axis=3)
    elif channels == 1 and not grey:  # ITU-R 601-2 luma, as PIL's convert("L")
        luma = array[..., 0] * 0.299 + array[..., 1] * 0.587 + array[..., 2] * 0.114
        array = np.clip(np.round(luma), 0, 255).astype(np.uint8) if array.dtype == np.uint8 else luma.astype(np.float32)
    images = np.ascontiguousarray(array.transpose(0, 3, 1, 2) if array.ndim == 4 else array)
    return np.arange(len(images), dtype=np.int64) + source.id_offset, images


def load_array(path: str | Path, key: str | None = None, session: str | None = None, field: str | None = None) -> np.ndarray:
    """The array in a .npy file, a .npz member or an HDF5 dataset (`key`); one-line errors naming the file."""
    path = Path(path)

    def fail(problem: str) -> DatasetError:
        return DatasetError(path, problem, session=session, field=field)

    if not path.is_file():
        raise fail("file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as members:
                if key is None and len(members.files) != 1:
                    raise fail(f"holds {members.files}; give the one to use as key")
                if (key or members.files[0]) not in members.files:
                    raise fail(f"has no member {key!r}; it holds {members.files}")
                return members[key or members.files[0]]
        if suffix in (".h5", ".hdf5", ".nc"):
            import h5py

            with h5py.File(path, "r") as f:
                if not isinstance(f.get(key), h5py.Dataset):
                    raise fail(f"has no dataset {key!r}")
                return f[key][()]
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise fail(f"not a readable array file ({type(error).__name__}: {error})") from None
    raise fail(f"unknown array file type {suffix!r}; use one of {', '.join(ARRAY_SUFFIXES)}")

