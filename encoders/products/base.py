"""What every product shares: the data it may use, the interface, and running a list of them for checkpoints.

A product is one mechanism applied to a response model (`encoders.contract.ResponseModel`):
MEIs, reconstructions, similarity diagnostics. It is a small object of typed settings that can
check itself against a model and data before any work, say what its result depends on, compute a
labelled xarray Dataset and draw it. `make_products` runs a list of them for one checkpoint (or
ensemble) into a folder through the store. Nothing here imports Lightning.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xarray as xr
from matplotlib.figure import Figure

from encoders.contract import ResponseModel
from encoders.products.progress import Progress
from encoders.products.store import get_or_make

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording
    from encoders.twin import Twin


@dataclass
class ProductData:
    """The recorded data a product may use: the recording (images, responses, tiers) and the twin, if any.

    The twin is resolved once with the recording (`Recording.twin`) and passed to whatever scores against it.
    `truth_store`, when given, is the folder where a twin's true MEIs are kept for every product and
    checkpoint that asks for the same ones (`encoders.twin.scoring.true_meis`).
    """

    recording: Recording | None = None
    twin: Twin | None = None
    truth_store: Path | None = None

    @classmethod
    def of(cls, recording: Recording | None, truth_store: Path | None = None) -> "ProductData":
        """The data of a recording (or of anything holding one as `.recording`, e.g. a set-up data module)."""
        recording = getattr(recording, "recording", recording)
        return cls(recording, getattr(recording, "twin", None), truth_store)


class Product:
    """Base of products; subclasses set `kind` and implement the methods below.

    The constructor's arguments are recorded once (`arguments`, with defaults filled in), and the store's
    fingerprint reads that record (`request`): a setting added to a product's constructor is in every
    cache key without being listed again. A method argument enters by its own record (`Method.key`).
    """

    kind = "product"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recorded(self, *args, **kw):
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            init(self, *args, **kw)
            self.__dict__["_arguments"] = {k: v for k, v in bound.arguments.items() if k != "self"}

        cls.__init__ = recorded

    @property
    def arguments(self) -> dict:
        """The constructor's arguments as given (defaults filled in)."""
        return dict(self.__dict__.get("_arguments", {}))

    def stem(self) -> str:
        """File name without suffix, e.g. mei_ga."""
        return self.kind

    def check(self, model: ResponseModel, data: ProductData) -> None:
        """Raise EncodersError for anything that would fail later (ids, sessions, data): before any work."""

    def request(self, model: ResponseModel, data: ProductData) -> dict:
        """Everything the result depends on besides the model's weights (enters the fingerprint): the product's
        class and recorded arguments (a method by its settings) plus what `resolved` adds from the model and data."""
        shape = tuple(model.input_shape)
        arguments = {name: value.key(shape) if callable(getattr(value, "key", None)) else value
                     for name, value in self.arguments.items()}
        return {"product": type(self).__name__, "kind": self.kind, **arguments, **self.resolved(model, data)}

    def resolved(self, model: ResponseModel, data: ProductData) -> dict:
        """Choices made from the model and data that the result depends on (e.g. the test images picked)."""
        return {}

    def compute(self, model: ResponseModel, data: ProductData, progress: Progress) -> xr.Dataset:
        raise NotImplementedError

    def figure(self, results: xr.Dataset) -> Figure:
        raise NotImplementedError

    def describe(self, results: xr.Dataset) -> str:
        """One line for the log."""
        return self.stem()


@dataclass
class Made:
    """One product of one checkpoint: where it is, the new figures, how it was obtained, its log line."""

    path: Path
    figures: list[Path]
    how: str
    line: str
    results: xr.Dataset


def make_products(
    products: Sequence[Product], paths: Sequence[Path], model: ResponseModel, data: ProductData, folder: Path,
    progress: Progress | None = None,
) -> list[Made]:
    """Make (or keep, or copy) each product of the model of checkpoints `paths` into `folder`."""
    progress = progress or Progress.quiet()
    for product in products:  # everything is checked before the first product starts
        product.check(model, data)
    made = []
    for product in products:
        nc = Path(folder) / f"{product.stem()}.nc"
        results, figures, how = get_or_make(
            list(paths), nc, product.request(model, data), lambda p=product: p.compute(model, data, progress), product.figure,
        )
        made.append(Made(nc, figures, how, f"{product.describe(results)} -> {nc} ({how})", results))
    return made
