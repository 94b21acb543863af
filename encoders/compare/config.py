"""The comparison's YAML file, read and checked before any work: every key is known or it is an error.

Layout (see experiments/compare_*.yaml):

    out: runs/NAME                 folder of every output (models/, meis/, scores/, report.md, figures/)
    models: PATH | null            where the models are trained or reused (default <out>/models): another
                                   comparison's models, to compare synthesis settings without retraining
    device: cpu                    where MEIs, scores and similarities are computed (training: trainer.accelerator)
    threads: 1 | null              torch CPU threads of the whole run; null = torch's default (one per core)
    data: {...}                    RecordedDataModule arguments (its `seed` is each model's seed)
    architectures:                 name -> {core: {...}, readout: {...}, optional: bool, EncodingModel arguments}
    seeds: {generating: [...], held_out: [...]}
    trainer: {...}                 pytorch_lightning.Trainer arguments (not callbacks/logger/default_root_dir)
    early_stopping: {...} | null   EarlyStopping arguments (monitor is val/correlation)
    meis: {top_k, seeds, contrast, keep}
                                   neurons well predicted by every architecture; one MEI per neuron and seed,
                                   every method's images at one per-pixel contrast; keep: best (each neuron's
                                   best seed on the generating ensemble, the paper's protocol) or all seeds
    methods:                       name -> {type: ga | egg, preset: paper (optional), GASettings/EGGSettings fields
                                   without seeds and contrast}: every named method makes a set of MEIs
    pairs: {label: [a, b]}         method a vs method b, paired per neuron (default: the one EGG vs the one GA)
    meni: {...} | null             EGGSettings at the prior's own contrast: MENIs, compared with top natural images
    reconstructions: {...} | null  {images, sessions, contrast, methods, metric}: reconstructions of test images
                                   from the generating ensemble's predicted responses, by the named methods
    scoring: {natural_tiers, ground_truth}
    similarity: {...} | null       measures between the architectures' representations
    wandb: {project, name} | null  offline W&B runs (training curves, report tables and figures)

An unknown key anywhere raises EncodersError naming the file and the key's full path.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import EarlyStopping

from encoders.datasets.datamodule import RecordedDataModule
from encoders.encoder import CORES, READOUTS
from encoders.errors import EncodersError, one_line
from encoders.similarity import MEASURES
from encoders.synthesis.energies import METRICS
from encoders.synthesis.gradient_ascent import DEFAULT_CONTRAST, GASettings
from encoders.synthesis.methods import EGGSettings
from encoders.training import EncodingModel
from encoders.yaml_files import load_yaml_file

SET_BY_COMPARE = {
    "trainer": {"callbacks", "logger", "default_root_dir", "enable_checkpointing"},
    "data": {"seed"},
    "early_stopping": {"monitor", "mode"},
    "model": {"core", "readout", "data_info"},
}
# filled from the data when a model is built, so a config may not set them
DATA_DERIVED = {"core": set(), "readout": {"in_shape", "n_neurons", "mean_activity"}}
TIERS = ("train", "validation", "test")
METHOD_TYPES = {"ga": GASettings, "egg": EGGSettings}
KEEP = ("best", "all")
SET_BY_MEIS = {"seeds", "contrast", "norm"}  # every method takes them from `meis`, so all compare at one contrast


def _parameters(callable_: Any) -> set[str]:
    return {name for name in inspect.signature(callable_).parameters if name not in ("self", "kwargs", "args")}


class _Reader:
    """Checks one file's mapping section by section; every error names the file and the key path."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> EncodersError:
        return EncodersError(f"{self.path}: {where}: {problem}")

    def mapping(self, value: Any, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {type(value).__name__}")
        return dict(value)

    def keys(self, values: dict, allowed: set[str], where: str, reserved: set[str] = frozenset()) -> None:
        clash = sorted(set(values) & set(reserved))
        if clash:
            raise self.fail(where, f"{clash} are set by `encoders compare`, not the config")
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            paths = [f"{where}.{k}" if where else k for k in unknown]
            raise self.fail(where or "top level", f"unknown key(s) {paths}; allowed: {sorted(set(allowed) - set(reserved))}")

    def seeds(self, value: Any, where: str) -> list[int]:
        if not isinstance(value, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            raise self.fail(where, f"must be a list of integers, got {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(where, f"has duplicates: {value}")
        return list(value)


@dataclass(frozen=True)
class Architecture:
    """One encoding-model architecture: core and readout configs plus other EncodingModel arguments."""

    name: str
    core: dict
    readout: dict
    model: dict = field(default_factory=dict)
    optional: bool = False

    def model_arguments(self) -> dict:
        """Keyword arguments of EncodingModel for this architecture."""
        return {"core": dict(self.core), "readout": dict(self.readout), **self.model}


@dataclass(frozen=True)
class SimilarityConfig:
    """Measures between the models' predicted test responses and core features (encoders.similarity)."""

    measures: tuple[str, ...] = ("cka_linear", "procrustes_angular_score")
    max_features: int = 256
    pool_size: int = 4
    tier: str = "test"
    seed: int = 0


@dataclass(frozen=True)
class ReconstructionConfig:
    """Reconstructions of test images from the generating ensemble's predicted responses (`methods` by name)."""

    images: int = 2
    sessions: tuple[str, ...] | None = None
    contrast: float = 1.0
    methods: tuple[str, ...] = ()
    metric: str = "correlation"


@dataclass(frozen=True)
class CompareConfig:
    """A validated comparison config; `source` is the YAML it came from."""

    source: Path
    out: Path
    models: Path
    device: str
    threads: int | None
    data: dict
    architectures: dict[str, Architecture]
    generating_seeds: tuple[int, ...]
    held_out_seeds: tuple[int, ...]
    trainer: dict
    early_stopping: dict | None
    top_k: int
    mei_seeds: tuple[int, ...]
    contrast: float
    keep: str
    methods: dict[str, GASettings | EGGSettings]
    pairs: dict[str, tuple[str, str]]
    meni: EGGSettings | None
    reconstructions: ReconstructionConfig | None
    natural_tiers: tuple[str, ...]
    ground_truth: bool
    similarity: SimilarityConfig | None
    wandb: dict | None

    @property
    def seeds(self) -> tuple[int, ...]:
        """Every trained seed of every architecture: generating first, then held out."""
        return self.generating_seeds + self.held_out_seeds

    @property
    def name(self) -> str:
        return self.out.name


def _architecture(reader: _Reader, name: str, value: Any) -> Architecture:
    where = f"architectures.{name}"
    values = reader.mapping(value, where)
    model_keys = _parameters(EncodingModel.__init__) - SET_BY_COMPARE["model"]
    reader.keys(values, {"core", "readout", "optional"} | model_keys | SET_BY_COMPARE["model"], where,
                reserved=SET_BY_COMPARE["model"] - {"core", "readout"})
    parts = {}
    for part, registry in (("core", CORES), ("readout", READOUTS)):
        config = reader.mapping(values.get(part), f"{where}.{part}")
        kind = config.get("type")
        if kind not in registry:
            raise reader.fail(f"{where}.{part}.type", f"must be one of {sorted(registry)}, got {kind!r}")
        reader.keys({k: v for k, v in config.items() if k != "type"}, _parameters(registry[kind].__init__),
                    f"{where}.{part}", reserved=DATA_DERIVED[part])
        parts[part] = config
    optional = values.get("optional", False)
    if not isinstance(optional, bool):
        raise reader.fail(f"{where}.optional", f"must be true or false, got {optional!r}")
    model = {k: v for k, v in values.items() if k in model_keys}
    try:  # every value checked now, as training would, not when the grid reaches it (optional ones may lack weights)
        if not optional:
            EncodingModel(core=parts["core"], readout=parts["readout"], **model)
    except (EncodersError, TypeError, ValueError) as error:
        raise reader.fail(where, str(error)) from None
    return Architecture(name=name, core=parts["core"], readout=parts["readout"], model=model, optional=optional)


def _dataclass_from(reader: _Reader, cls: type, values: dict, where: str, exclude: set[str] = frozenset(), **given: Any):
    reader.keys(values, {f.name for f in fields(cls)} - set(given), where, reserved=exclude)
    try:
        return cls(**values, **given)
    except (TypeError, ValueError, EncodersError) as error:
        raise reader.fail(where, str(error)) from None


def _method(reader: _Reader, name: str, value: Any, seeds: tuple[int, ...], contrast: float) -> GASettings | EGGSettings:
    where = f"methods.{name}"
    if not name.replace("_", "").isalnum() or not name.islower():
        raise reader.fail(where, "method names are lower-case letters, digits and _ (they name files)")
    if name == "meni" or name.startswith("top_natural"):
        raise reader.fail(where, "this name is taken by the comparison's MENIs or natural images; choose another")
    values = reader.mapping(value, where)
    kind = values.pop("type", None)
    if kind not in METHOD_TYPES:
        raise reader.fail(f"{where}.type", f"must be one of {sorted(METHOD_TYPES)}, got {kind!r}")
    preset = values.pop("preset", None)
    if preset not in (None, "paper"):
        raise reader.fail(f"{where}.preset", f"must be paper or absent, got {preset!r}")
    cls = METHOD_TYPES[kind]
    reader.keys(values, {f.name for f in fields(cls)}, where, reserved=SET_BY_MEIS)
    if kind == "egg" and "prior" not in values:
        raise reader.fail(f"{where}.prior", "is required")
    try:
        if preset == "paper":
            base = cls.paper(values.pop("prior"), seeds) if kind == "egg" else cls.paper(seeds)
            return dataclasses.replace(base, **values, contrast=contrast)
        return cls(**values, seeds=seeds, contrast=contrast)
    except (TypeError, ValueError, EncodersError) as error:
        raise reader.fail(where, str(error)) from None


def _check_prior(reader: _Reader, where: str, method: GASettings | EGGSettings) -> None:
    try:
        method.check_available()
    except EncodersError as error:
        raise reader.fail(f"{where}.prior", str(error)) from None


def _pairs(reader: _Reader, value: Any, methods: dict) -> dict[str, tuple[str, str]]:
    if value is None:
        kinds = {k: [n for n, m in methods.items() if m.method == k] for k in METHOD_TYPES}
        if len(kinds["egg"]) == 1 and len(kinds["ga"]) == 1:
            return {"defaults": (kinds["egg"][0], kinds["ga"][0])}
        return {}
    pairs = {}
    for label, pair in reader.mapping(value, "pairs").items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in methods for p in pair) and pair[0] != pair[1]):
            raise reader.fail(f"pairs.{label}", f"must be [method, other method] of {sorted(methods)}, got {pair!r}")
        pairs[str(label)] = (pair[0], pair[1])
    return pairs


def load_config(path: str | Path, out: str | Path | None = None) -> CompareConfig:
    """Read and check a comparison YAML; `out` overrides its output folder."""
    path = Path(path)
    raw = load_yaml_file(path)
    reader = _Reader(path)
    top = reader.mapping(raw, "top level")
    sections = {"out", "models", "device", "threads", "data", "architectures", "seeds", "trainer", "early_stopping", "meis", "methods",
                "pairs", "meni", "reconstructions", "scoring", "similarity", "wandb"}
    reader.keys(top, sections, "")
    for required in ("out", "data", "architectures", "seeds", "methods"):
        if required not in top:
            raise reader.fail(required, "is required")

    data = reader.mapping(top["data"], "data")
    reader.keys(data, _parameters(RecordedDataModule.__init__), "data", reserved=SET_BY_COMPARE["data"])
    if "path" not in data:
        raise reader.fail("data.path", "is required")

    architectures = reader.mapping(top["architectures"], "architectures")
    if not architectures:
        raise reader.fail("architectures", "name at least one architecture")
    archs = {str(name): _architecture(reader, str(name), value) for name, value in architectures.items()}

    seeds = reader.mapping(top["seeds"], "seeds")
    reader.keys(seeds, {"generating", "held_out"}, "seeds")
    generating = reader.seeds(seeds.get("generating"), "seeds.generating")
    held_out = reader.seeds(seeds.get("held_out", []), "seeds.held_out")
    if not generating:
        raise reader.fail("seeds.generating", "needs at least one seed (the generating ensemble)")
    if set(generating) & set(held_out):
        raise reader.fail("seeds", f"a seed cannot both generate MEIs and be held out: {sorted(set(generating) & set(held_out))}")

    trainer = reader.mapping(top.get("trainer"), "trainer")
    reader.keys(trainer, _parameters(pl.Trainer.__init__), "trainer", reserved=SET_BY_COMPARE["trainer"])
    hardware = ("accelerator", "devices", "strategy", "num_nodes", "precision")  # checked where the models train
    try:  # Lightning's own checks of the other values (max_epochs, max_time, ...), before anything trains
        pl.Trainer(**{"enable_progress_bar": False, "enable_model_summary": False,
                      **{k: v for k, v in trainer.items() if k not in hardware}}, logger=False)
    except (MisconfigurationException, TypeError, ValueError) as error:
        raise reader.fail("trainer", one_line(error)) from None
    early = top.get("early_stopping", {})
    if early is not None:
        early = reader.mapping(early, "early_stopping")
        reader.keys(early, _parameters(EarlyStopping.__init__), "early_stopping", reserved=SET_BY_COMPARE["early_stopping"])

    meis = reader.mapping(top.get("meis"), "meis")
    reader.keys(meis, {"top_k", "seeds", "contrast", "keep"}, "meis")
    top_k = meis.get("top_k", 12)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise reader.fail("meis.top_k", f"must be a positive integer, got {top_k!r}")
    mei_seeds = reader.seeds(meis.get("seeds", [0]), "meis.seeds")
    if not mei_seeds:
        raise reader.fail("meis.seeds", "needs at least one seed")
    contrast = meis.get("contrast", DEFAULT_CONTRAST)
    if isinstance(contrast, bool) or not isinstance(contrast, (int, float)) or not contrast > 0:
        raise reader.fail("meis.contrast", f"must be a positive number, got {contrast!r}")
    keep = meis.get("keep", "best")
    if keep not in KEEP:
        raise reader.fail("meis.keep", f"must be one of {list(KEEP)}, got {keep!r}")
    seeds_ = tuple(mei_seeds)
    method_values = reader.mapping(top["methods"], "methods")
    if not method_values:
        raise reader.fail("methods", "name at least one method")
    methods = {str(name): _method(reader, str(name), value, seeds_, float(contrast)) for name, value in method_values.items()}
    for name, method in methods.items():
        _check_prior(reader, f"methods.{name}", method)
    pairs = _pairs(reader, top.get("pairs"), methods)

    meni = None
    if top.get("meni") is not None:
        meni_values = reader.mapping(top["meni"], "meni")
        meni = _dataclass_from(reader, EGGSettings, meni_values, "meni", exclude=SET_BY_MEIS, seeds=seeds_, contrast=None)
        _check_prior(reader, "meni", meni)

    reconstructions = None
    if top.get("reconstructions") is not None:
        values = reader.mapping(top["reconstructions"], "reconstructions")
        for key in ("methods", "sessions"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        reconstructions = _dataclass_from(reader, ReconstructionConfig, values, "reconstructions")
        unknown = [m for m in reconstructions.methods if m not in methods]
        if unknown or not reconstructions.methods:
            raise reader.fail("reconstructions.methods", f"name methods of `methods` {sorted(methods)}, got {list(reconstructions.methods)}")
        if isinstance(reconstructions.images, bool) or not isinstance(reconstructions.images, int) or reconstructions.images < 1:
            raise reader.fail("reconstructions.images", f"must be a positive integer, got {reconstructions.images!r}")
        if not reconstructions.contrast > 0:
            raise reader.fail("reconstructions.contrast", f"must be positive, got {reconstructions.contrast!r}")
        if reconstructions.metric not in METRICS:
            raise reader.fail("reconstructions.metric", f"must be one of {list(METRICS)}, got {reconstructions.metric!r}")

    scoring = reader.mapping(top.get("scoring"), "scoring")
    reader.keys(scoring, {"natural_tiers", "ground_truth"}, "scoring")
    natural = list(scoring.get("natural_tiers", ["validation", "test"]))
    if not natural or any(t not in TIERS for t in natural):
        raise reader.fail("scoring.natural_tiers", f"must be a list of {list(TIERS)}, got {natural!r}")
    ground_truth = scoring.get("ground_truth", True)
    if not isinstance(ground_truth, bool):
        raise reader.fail("scoring.ground_truth", f"must be true or false, got {ground_truth!r}")

    similarity = None
    if top.get("similarity", {}) is not None:
        values = reader.mapping(top.get("similarity"), "similarity")
        if "measures" in values:
            values["measures"] = tuple(values["measures"])
        similarity = _dataclass_from(reader, SimilarityConfig, values, "similarity")
        unknown = [m for m in similarity.measures if m not in MEASURES]
        if unknown or not similarity.measures:
            raise reader.fail("similarity.measures", f"unknown {unknown}; known: {sorted(MEASURES)}")
        if similarity.tier not in TIERS:
            raise reader.fail("similarity.tier", f"must be one of {list(TIERS)}")

    threads = top.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise reader.fail("threads", f"must be a positive integer or null, got {threads!r}")

    wandb = top.get("wandb")
    if wandb is not None:
        wandb = reader.mapping(wandb, "wandb")
        reader.keys(wandb, {"project", "name"}, "wandb")

    out_dir = Path(out if out is not None else top["out"])
    models_dir = top.get("models")
    if models_dir is not None and not isinstance(models_dir, str):
        raise reader.fail("models", f"must be a folder path or null, got {models_dir!r}")
    return CompareConfig(
        source=path, out=out_dir, models=Path(models_dir) if models_dir else out_dir / "models", device=str(top.get("device", "cpu")), threads=threads,
        data=data, architectures=archs, generating_seeds=tuple(generating), held_out_seeds=tuple(held_out),
        trainer=trainer, early_stopping=early, top_k=top_k, mei_seeds=seeds_, contrast=float(contrast), keep=keep,
        methods=methods, pairs=pairs, meni=meni, reconstructions=reconstructions, natural_tiers=tuple(natural), ground_truth=ground_truth, similarity=similarity, wandb=wandb,
    )
