"""What a synthesis method is: one interface that gradient ascent and energy-guided diffusion share.

A method makes images that lower an energy: `synthesize(energy_for, seeds, model)` gives one image
per seed (image i starts from seeds[i]) whose energy term is `energy_for([i, ...])`, batched by the
method's `batch_size`. Products (MEIs, MENIs, reconstructions) and comparisons hold a method and
never ask which one it is: they swap the object, as diffusers swaps a scheduler.

Settings are recorded once, from the constructor (as diffusers' `register_to_config`): every
argument of the method's constructor, after it normalised it, is in `settings`; equality, hashing,
the NetCDF attributes (`attrs`) and the product store's key (`key`) all read that one record, so a
setting added to a constructor can never be left out of a file or a cache key. A preset (a
subclass that fixes some settings) takes fewer arguments: `config` holds those, which `replace`
and the command line can change.
jsonargparse reads a `Method`-typed option in subclass mode: `{class_path: ..., init_args: {...}}`,
with `--method.X` flags merged into it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from encoders.errors import EncodersError

Energy = Callable[[torch.Tensor], torch.Tensor]  # model-space images (B, C, H, W) -> (B,), one term per image


@dataclass
class SynthesisResult:
    """images (B, C, H, W) in model space, energy (B,) of the final images, trace (steps, B)."""

    images: torch.Tensor
    energy: torch.Tensor
    trace: torch.Tensor


def generators(seeds: Sequence[int] | int, n_images: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One torch generator per image, seeded with seeds[b] (one int: the same seed for every image)."""
    seeds = [int(seeds)] * n_images if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seeds) != n_images:
        raise EncodersError(f"need one seed per image: {n_images} images, {len(seeds)} seeds")
    return [torch.Generator(device).manual_seed(seed) for seed in seeds]


def _plain(value: object) -> object:
    """A JSON- and NetCDF-friendly copy of a recorded setting (tuples as lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class Method:
    """Base of synthesis methods. Subclasses set `name` and implement `synthesize` (and may override the rest).

    A subclass's `__init__` stores each argument as an attribute of the same name (normalised, e.g.
    seeds as a tuple) and checks it; the base records them as `config` when the constructor returns.
    """

    name = "method"  # short name: files (mei_<name>.nc), attributes, the `method` coordinate

    def __init__(self) -> None:  # a method's own constructor replaces this one (and never calls it)
        raise EncodersError(f"method: {type(self).__name__} is the interface every method has, not a method; give "
                            "encoders.synthesis.GASettings, EGGSettings or a preset (GASubmission, GARebuttal, EGGSubmission, "
                            "EGGRebuttal, MENIPaper)")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        parameters = [p for p in inspect.signature(init).parameters if p != "self"]

        @functools.wraps(init)
        def recorded(self, *args, **kw):
            init(self, *args, **kw)
            values = {name: getattr(self, name) for name in parameters}
            # the innermost constructor (the method's own, which sets every attribute) records all settings;
            # the outermost (a preset's, which may fix some) records what can be given: the last to finish
            self.__dict__.setdefault("_settings", values)
            self.__dict__["_config"] = values

        cls.__init__ = recorded

    # ---- the record -------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The constructor's arguments as recorded (read-only copy): what `replace` and the CLI can change."""
        return dict(self._config)

    @property
    def settings(self) -> dict:
        """Every setting the images depend on (a preset's fixed ones too), as recorded (read-only copy)."""
        return dict(self._settings)

    def replace(self, **changes) -> "Method":
        """The same method with some arguments changed (a new object, checked like any other)."""
        unknown = sorted(set(changes) - set(self._config))
        if unknown:
            fixed = sorted(set(unknown) & set(self._settings))
            hint = f"; {type(self).__name__} is a preset that fixes {fixed}: use its method class to change them" if fixed else ""
            raise EncodersError(f"method: {unknown} not option(s) of {type(self).__name__}; its options are "
                                f"{sorted(self._config)}{hint}")
        return type(self)(**{**self._config, **changes})

    def attrs(self, shape: Sequence[int]) -> dict:
        """NetCDF-storable settings (no None, no bools), prefixed by the method's name; shape = the model's input."""
        values = {name: _plain(value) for name, value in self._settings.items()}
        values.update(self.derived(shape))
        out = {}
        for name, value in values.items():
            if value is None:
                value = float("nan")
            elif isinstance(value, bool):
                value = int(value)
            out[f"{self.name}_{name}"] = value
        out[f"{self.name}_class"] = type(self).__name__
        return out

    def key(self, shape: Sequence[int]) -> dict:
        """What the store's fingerprint reads: the class and every recorded setting."""
        return {"class": f"{type(self).__module__}.{type(self).__name__}", **self.attrs(shape)}

    def derived(self, shape: Sequence[int]) -> dict:
        """Settings that follow from the recorded ones and the model's input shape (e.g. the image norm)."""
        return {}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._settings == self._settings

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(sorted(self._settings.items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._config.items())})"

    def __setattr__(self, name: str, value: object) -> None:
        if "_settings" in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is immutable; use replace({name}=...)")
        super().__setattr__(name, value)

    # ---- what every method answers ------------------------------------------------------------------
    seeds: tuple[int, ...]
    batch_size: int

    @property
    def step_count(self) -> int:
        """Steps of one image (the length of its trace)."""
        raise NotImplementedError

    stops_early = False  # whether run_chunk honours stop_below (gradient ascent does; a diffusion schedule does not)

    @property
    def prior_contrast(self) -> bool:
        """Whether the images keep a diffusion prior's own contrast (MENIs, reconstructions) rather than a fixed one."""
        return False

    def check_available(self) -> None:
        """Everything the method needs outside its settings is there (a prior, ...): else EncodersError now."""

    def truth(self) -> "Method":
        """How a digital twin's true MEIs are found when scoring this method's images (the yardstick)."""
        raise NotImplementedError

    def synthesize(
        self, energy_for: Callable[[list[int]], Energy], seeds: Sequence[int], model,
        progress: Callable[[int], None] | None = None, stop_below: torch.Tensor | None = None,
    ) -> SynthesisResult:
        """Minimise one energy per image, image i from seeds[i], `batch_size` images at a time.

        energy_for(indices) builds the energy of those images; model is the response model (its
        device, input shape and image transform); progress(n) is called after each chunk of n images;
        stop_below (len(seeds),): image i stops as soon as its energy is below stop_below[i] (the EGG
        paper's GD reconstructions stop at EGG's loss), for methods that can stop early.
        Chunks only bound memory: each image's result is the same.
        """
        if stop_below is not None and tuple(stop_below.shape) != (len(seeds),):
            raise EncodersError(f"stop_below: one value per image ({len(seeds)}), got shape {tuple(stop_below.shape)}")
        parts = []
        for start in range(0, len(seeds), self.batch_size):
            index = list(range(start, min(start + self.batch_size, len(seeds))))
            stop = None if stop_below is None else stop_below[index]
            parts.append(self.run_chunk(energy_for(index), [seeds[i] for i in index], model, stop))
            if progress is not None:
                progress(len(index))
        return SynthesisResult(
            torch.cat([p.images for p in parts]), torch.cat([p.energy for p in parts]), torch.cat([p.trace for p in parts], 1),
        )

    def run_chunk(self, energy: Energy, seeds: Sequence[int], model, stop_below: torch.Tensor | None = None) -> SynthesisResult:
        """One chunk of images under one energy (len(seeds) terms), each stopping below stop_below if given."""
        raise NotImplementedError
