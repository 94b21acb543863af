"""The comparison's spec: read by jsonargparse with training's and products' own blocks, checked whole before any work.

Layout (see experiments/compare_*.yaml):

    out: runs/NAME                 folder of every output (models/, meis/, scores/, report.md, figures/)
    models: PATH | null            where the models are trained or reused (default <out>/models): another
                                   comparison's models, to compare synthesis settings without retraining
    device: cpu                    where MEIs, scores and similarities are computed (training: trainer.accelerator)
    threads: 1 | null              torch CPU threads of the whole run; null = torch's default (one per core)
    data: {...}                    train.py's `data:` block (RecordedDataModule); its `seed` is each model's seed
    architectures:                 name -> {model: {...}, optional: bool}; `model:` is train.py's block
                                   (EncodingModel: core, readout, lr, ...); an optional one that cannot be
                                   built here (no torchvision or weights) is skipped
    seeds: {generating: [...], held_out: [...]}
    trainer: {...}                 train.py's `trainer:` block, less callbacks/logger/default_root_dir
    early_stopping: {...} | null   EarlyStopping arguments (monitor val/correlation, mode max)
    meis: {top_k, seeds, contrast, keep}
                                   neurons well predicted by every architecture; one MEI per neuron and seed,
                                   every method's images at one per-pixel contrast (`seeds` and `contrast`
                                   replace the methods' own); keep: best (each neuron's best seed on the
                                   generating ensemble, the paper's protocol) or all seeds
    methods:                       name -> a method as products and training YAMLs take it:
                                   {class_path: encoders.synthesis.GASettings | EGGSettings | GASubmission | EGGSubmission | GARebuttal | EGGRebuttal,
                                   init_args: {...}}: every named method makes a set of MEIs
    pairs: {label: [a, b]}         method a vs method b, paired per neuron (default: the one EGG vs the one GA)
    meni: {class_path, init_args} | null
                                   a method at the prior's own contrast (EGG): MENIs, compared with top natural images
    reconstructions: {...} | null  {images, sessions, contrast, methods, metric}: reconstructions of test images
                                   from the generating ensemble's predicted responses, by the named methods
    scoring: {natural_tiers, ground_truth}
    similarity: {...} | null       measures between the architectures' representations
    wandb: {project, name} | null  offline W&B runs (training curves, report tables and figures)

Every model trains through train.py (`grid.py` writes its config), so a block reads here exactly as
there. Any error (an unknown key anywhere, a value a constructor refuses, a missing prior) is one
EncodersError naming the file and the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from encoders.errors import EncodersError, cause_of, one_line
from encoders.synthesis.energies import METRICS
from encoders.synthesis.gradient_ascent import DEFAULT_CONTRAST
from encoders.yaml_files import load_yaml_file, strict_yaml

Tier = Literal["train", "validation", "test"]
# keys of train.py's blocks that compare sets itself, and why
RESERVED = {
    "data": {"seed": "each model's seed (`seeds:`)", "transform_from": "train.py sets it from model.init_from"},
    "trainer": dict.fromkeys(("callbacks", "logger", "default_root_dir", "enable_checkpointing"),
                             "compare's checkpoint, early stopping, CSV/W&B loggers and folders"),
    "early_stopping": dict.fromkeys(("monitor", "mode"), "val/correlation, max"),
}
OLD_METHODS = {("ga", None): "GASettings", ("ga", "paper"): "GARebuttal", ("egg", None): "EGGSettings", ("egg", "paper"): "EGGRebuttal"}


@dataclass(frozen=True)
class Architecture:
    """One encoding-model architecture: train.py's `model:` block (EncodingModel arguments), as written."""

    name: str
    model: dict
    optional: bool = False


@dataclass(frozen=True)
class Seeds:
    """generating: the seeds whose models make the images; held_out: seeds that only score them."""

    generating: list[NonNegativeInt]
    held_out: list[NonNegativeInt] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.generating:
            raise EncodersError("seeds.generating: needs at least one seed (the generating ensemble)")
        for name in ("generating", "held_out"):
            values = getattr(self, name)
            if len(set(values)) != len(values) or max(values, default=0) >= 2**32:
                raise EncodersError(f"seeds.{name}: give distinct seeds 0 to {2**32 - 1}, got {list(values)}")
        if set(self.generating) & set(self.held_out):
            raise EncodersError(f"seeds: a seed cannot both generate MEIs and be held out: "
                                f"{sorted(set(self.generating) & set(self.held_out))}")


@dataclass(frozen=True)
class MeiSettings:
    """top_k neurons; every method's seeds and per-pixel contrast; keep: each neuron's best seed, or all."""

    top_k: PositiveInt = 12
    seeds: list[NonNegativeInt] = field(default_factory=lambda: [0])
    contrast: PositiveFloat = DEFAULT_CONTRAST
    keep: Literal["best", "all"] = "best"

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EncodersError(f"meis.seeds: give at least one seed, all distinct, got {list(self.seeds)}")


@dataclass(frozen=True)
class ReconstructionConfig:
    """Reconstructions of test images from the generating ensemble's predicted responses: `methods` names methods
    of the spec's `methods`, or declares its own (name -> {class_path, init_args}, e.g. the paper's reconstruction
    presets, which are not MEI methods); `contrast` null keeps each method's own contrast; `seeds` null = meis.seeds;
    `stop_at` {a: b}: method a stops each image once its energy is below b's for that image (the EGG paper's GD
    reconstructions stop at EGG's loss, so both are compared at the same fit to the generating models)."""

    images: PositiveInt = 2
    sessions: list[str | int] | None = None
    seeds: list[int] | None = None
    contrast: PositiveFloat | None = 1.0
    methods: list[str] | dict[str, Any] = field(default_factory=list)
    metric: Literal[METRICS] = "correlation"
    stop_at: dict[str, str] | None = None


@dataclass(frozen=True)
class Scoring:
    """natural_tiers: the images each scorer's best natural response is taken over; ground_truth: a twin's true neurons score too."""

    natural_tiers: list[Tier] = field(default_factory=lambda: ["validation", "test"])
    ground_truth: bool = True

    def __post_init__(self) -> None:
        if not self.natural_tiers:
            raise EncodersError("scoring.natural_tiers: name at least one tier")


@dataclass(frozen=True)
class SimilarityConfig:
    """Measures between the models' predicted test responses and core features (encoders.similarity)."""

    measures: list[str] = field(default_factory=lambda: ["cka_linear", "procrustes_angular_score"])
    max_features: PositiveInt = 256
    pool_size: PositiveInt = 4
    tier: Tier = "test"
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        from encoders.similarity import MEASURES

        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown or not self.measures:
            raise EncodersError(f"similarity.measures: unknown {unknown}; known: {sorted(MEASURES)}")


@dataclass(frozen=True)
class Wandb:
    """Offline W&B runs: one per model (training curves) and one for the report."""

    project: str = "encoders"
    name: str | None = None


@dataclass(frozen=True)
class CompareConfig:
    """A validated comparison spec; `source` is the YAML it came from."""

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
    methods: dict  # name -> encoders.synthesis.Method
    pairs: dict[str, tuple[str, str]]
    meni: Any  # encoders.synthesis.Method | None
    reconstructions: ReconstructionConfig | None
    reconstruction_methods: dict  # name -> encoders.synthesis.Method, at the reconstruction contrast
    reconstruction_pairs: dict[str, tuple[str, str]]
    natural_tiers: tuple[str, ...]
    ground_truth: bool
    similarity: SimilarityConfig | None
    wandb: Wandb | None

    @property
    def seeds(self) -> tuple[int, ...]:
        """Every trained seed of every architecture: generating first, then held out."""
        return self.generating_seeds + self.held_out_seeds

    @property
    def name(self) -> str:
        return self.out.name


# ---- the parsers -----------------------------------------------------------------------------------
def spec_parser() -> ArgumentParser:
    """The spec's parser: train.py's data and trainer blocks, the comparison's own settings; architectures and
    methods are read one by one (`architecture_parser`, `method_parser`) so an error names which."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping

    from encoders.datasets.datamodule import RecordedDataModule

    strict_yaml()
    parser = ArgumentParser(prog="encoders compare", exit_on_error=False, default_env=False)
    parser.add_argument("--out", type=str, required=True, help="folder of every output")
    # a block given as null is taken out before parsing (`load_config`): these types need no `| None`
    parser.add_argument("--models", type=str, default=None, help="where the models are trained or reused")
    parser.add_argument("--device", type=str, default="cpu", help="device of MEIs, scores and similarities")
    parser.add_argument("--threads", type=PositiveInt, default=None, help="torch CPU threads of the whole run")
    parser.add_class_arguments(RecordedDataModule, "data", skip=set(RESERVED["data"]), instantiate=False)
    parser.add_argument("--architectures", type=dict[str, Any], required=True, help="name -> {model: {...}, optional}")
    parser.add_argument("--seeds", type=Seeds, required=True)
    parser.add_class_arguments(pl.Trainer, "trainer", skip=set(RESERVED["trainer"]), instantiate=False)
    parser.add_class_arguments(EarlyStopping, "early_stopping", skip=set(RESERVED["early_stopping"]), instantiate=False)
    parser.add_argument("--meis", type=MeiSettings, default=MeiSettings())
    parser.add_argument("--methods", type=dict[str, Any], required=True, help="name -> {class_path, init_args}")
    parser.add_argument("--pairs", type=dict[str, tuple[str, str]], default=None)
    parser.add_argument("--meni", type=Any, default=None, help="{class_path, init_args} of a method at the prior's contrast")
    parser.add_argument("--reconstructions", type=ReconstructionConfig, default=None)
    parser.add_argument("--scoring", type=Scoring, default=Scoring())
    parser.add_argument("--similarity", type=SimilarityConfig, default=SimilarityConfig())
    parser.add_argument("--wandb", type=Wandb, default=None)
    return parser


def architecture_parser() -> ArgumentParser:
    """One architecture: train.py's `model:` block (EncodingModel's arguments) and `optional`."""
    from encoders.training import EncodingModel

    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_class_arguments(EncodingModel, "model", skip={"data_info"}, instantiate=False)
    parser.add_argument("--optional", type=bool, default=False, help="skip it where it cannot be built (no torchvision/weights)")
    return parser


def method_parser() -> ArgumentParser:
    """One method, as products and training YAMLs read theirs: {class_path, init_args}."""
    from encoders.synthesis import Method

    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_argument("--method", type=Method, required=True)
    return parser


def _parse(parser: ArgumentParser, values: dict, where: str, path: Path) -> Any:
    """`values` parsed and instantiated by `parser`; any error one EncodersError naming the file and `where`."""
    prefix = f"{path}: {where}: " if where else f"{path}: "
    try:
        return parser.instantiate(parser.parse_object(values))
    except (ArgumentError, ValueError, TypeError, EncodersError) as error:  # a constructor's error comes wrapped
        raise EncodersError(prefix + one_line(cause_of(error) or error)) from None


# ---- the old spelling, refused with the new one -------------------------------------------------------
def _flow(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()


def _new_method(value: dict) -> str:
    rest = {k: v for k, v in value.items() if k not in ("type", "preset")}
    name = OLD_METHODS.get((value.get("type"), value.get("preset")), "GASettings | EGGSettings | GASubmission | EGGSubmission | GARebuttal | EGGRebuttal")
    return _flow({"class_path": f"encoders.synthesis.{name}", **({"init_args": rest} if rest else {})})


def refuse_old_spelling(path: Path, content: dict) -> None:
    """The spec before issue #23 (methods as {type, preset}, architectures without `model:`) fails in one line
    that gives the new spelling."""
    methods = content.get("methods")
    for name, value in (methods.items() if isinstance(methods, dict) else ()):
        if isinstance(value, dict) and ("type" in value or "preset" in value):
            raise EncodersError(f"{path}: methods.{name}: {{type: ..., preset: ...}} is the old spelling; a method is "
                                f"written as products and training YAMLs write it: {name}: {_new_method(value)}")
        if isinstance(value, dict) and "class_path" not in value:
            raise EncodersError(f"{path}: methods.{name}: name the method's class, e.g. {name}: "
                                f"{_flow({'class_path': 'encoders.synthesis.GASettings', 'init_args': value})}")
    meni = content.get("meni")
    if isinstance(meni, dict) and "class_path" not in meni:
        raise EncodersError(f"{path}: meni: name the method's class (the old spelling gave EGGSettings' fields alone): "
                            f"meni: {_flow({'class_path': 'encoders.synthesis.EGGSettings', 'init_args': meni})}")
    architectures = content.get("architectures")
    for name, value in (architectures.items() if isinstance(architectures, dict) else ()):
        if isinstance(value, dict) and "model" not in value and set(value) - {"optional"}:
            model = {k: v for k, v in value.items() if k != "optional"}
            new = {"model": model, **({"optional": value["optional"]} if "optional" in value else {})}
            raise EncodersError(f"{path}: architectures.{name}: core, readout and the other EncodingModel arguments "
                                f"go under `model:` (train.py's block): {name}: {_flow(new)}")


def refuse_reserved(path: Path, content: dict) -> None:
    """Keys of train.py's blocks that compare sets itself, refused with the reason."""
    for block, keys in RESERVED.items():
        values = content.get(block)
        clash = sorted(set(values) & set(keys)) if isinstance(values, dict) else []
        if clash:
            raise EncodersError(f"{path}: {block}: {clash} are set by `encoders compare` ({keys[clash[0]]}), not the spec")


# ---- the checks beyond types ------------------------------------------------------------------------
def _architecture(path: Path, name: str, value: Any) -> Architecture:
    from encoders.training import EncodingModel

    where = f"architectures.{name}"
    if not isinstance(value, dict):
        raise EncodersError(f"{path}: {where}: must be a mapping {{model: {{core: ..., readout: ...}}, optional: ...}}")
    parsed = _parse(architecture_parser(), value, where, path)
    model = dict(value.get("model") or {})  # as written: it becomes the model block of each member's train.py config
    optional = bool(parsed.optional)
    if not optional:  # every value checked now, as training will, not when the grid reaches it (optional ones may lack weights)
        try:
            EncodingModel(**model)
        except (EncodersError, TypeError, ValueError) as error:
            raise EncodersError(f"{path}: {where}.model: {one_line(error)}") from None
    return Architecture(name=name, model=model, optional=optional)


def _method(path: Path, where: str, value: Any, prior_contrast: bool = False, **changes: Any):
    """A method read as products read theirs, with the comparison's `changes` (seeds, contrast); `prior_contrast`:
    one that keeps a diffusion prior's contrast (MENIs)."""
    method = _parse(method_parser(), {"method": value}, where, path).method
    if prior_contrast and "contrast" not in method.config:
        changes.pop("contrast", None)  # a MENI preset keeps the prior's contrast by construction
    if method.config.get("norm") is not None:
        raise EncodersError(f"{path}: {where}: norm: every method's norm is set by meis.contrast; remove it")
    try:
        method = method.replace(**changes)
    except (EncodersError, TypeError, ValueError) as error:
        need = " (MENIs keep a diffusion prior's contrast: EGGSettings)" if prior_contrast else ""
        raise EncodersError(f"{path}: {where}: {one_line(error)}{need}") from None
    if prior_contrast and not method.prior_contrast:
        raise EncodersError(f"{path}: {where}: must keep a diffusion prior's contrast (EGGSettings)")
    try:
        method.check_available()  # a missing or broken prior fails now
    except EncodersError as error:
        raise EncodersError(f"{path}: {where}: {one_line(error)}") from None
    return method


def _method_name(path: Path, name: str) -> None:
    if not name.replace("_", "").isalnum() or not name.islower():
        raise EncodersError(f"{path}: methods.{name}: method names are lower-case letters, digits and _ (they name files)")
    if name == "meni" or name.startswith("top_natural"):
        raise EncodersError(f"{path}: methods.{name}: this name is taken by the comparison's MENIs or natural images; choose another")


def _pairs(path: Path, value: dict | None, methods: dict) -> dict[str, tuple[str, str]]:
    if value is None:
        kinds = {k: [n for n, m in methods.items() if m.name == k] for k in ("egg", "ga")}
        if len(kinds["egg"]) == 1 and len(kinds["ga"]) == 1:
            return {"defaults": (kinds["egg"][0], kinds["ga"][0])}
        return {}
    for label, pair in value.items():
        if not (all(p in methods for p in pair) and pair[0] != pair[1]):
            raise EncodersError(f"{path}: pairs.{label}: must be [method, other method] of {sorted(methods)}, got {list(pair)}")
    return {str(label): (pair[0], pair[1]) for label, pair in value.items()}


def _check_trainer(path: Path, trainer: dict) -> None:
    """Lightning's own checks of the trainer's values (max_epochs, max_time, ...), before anything trains."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    hardware = ("accelerator", "devices", "strategy", "num_nodes", "precision")  # checked where the models train
    quiet = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch")]  # no start-up lines twice
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.WARNING)
        pl.Trainer(**{"enable_progress_bar": False, "enable_model_summary": False,
                      **{k: v for k, v in trainer.items() if k not in hardware}}, logger=False)
    except (MisconfigurationException, TypeError, ValueError) as error:
        raise EncodersError(f"{path}: trainer: {one_line(error)}") from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def load_config(path: str | Path, out: str | Path | None = None) -> CompareConfig:
    """Read and check a comparison spec; `out` overrides its output folder."""
    from encoders.datasets.datamodule import RecordedDataModule

    path = Path(path)
    content = load_yaml_file(path)  # a key given twice fails here, naming it and its lines
    if not isinstance(content, dict):
        raise EncodersError(f"{path}: must be a mapping of the comparison's blocks (out, data, architectures, ...)")
    refuse_old_spelling(path, content)
    refuse_reserved(path, content)
    # null means "none": no early stopping, no similarity, no reconstructions, W&B, MENIs, ...
    nulls = {key for key, value in content.items() if value is None}
    values = {key: value for key, value in content.items() if value is not None}
    spec = _parse(spec_parser(), values, "", path)

    data = dict(content["data"])  # as written: the data block of every model's train.py config
    try:
        RecordedDataModule(**data)  # its argument checks (batch sizes, crop, resize, ...); the file is read later
    except (EncodersError, TypeError, ValueError) as error:
        raise EncodersError(f"{path}: data: {one_line(error)}") from None
    if not spec.architectures:
        raise EncodersError(f"{path}: architectures: name at least one architecture")
    architectures = {str(name): _architecture(path, str(name), value) for name, value in spec.architectures.items()}
    trainer = dict(content.get("trainer") or {})
    _check_trainer(path, trainer)

    seeds, contrast = tuple(int(s) for s in spec.meis.seeds), float(spec.meis.contrast)
    if not spec.methods:
        raise EncodersError(f"{path}: methods: name at least one method")
    methods = {}
    for name, value in spec.methods.items():
        _method_name(path, str(name))
        methods[str(name)] = _method(path, f"methods.{name}", value, seeds=seeds, contrast=contrast)
    meni = None
    if spec.meni is not None:
        meni = _method(path, "meni", spec.meni, seeds=seeds, contrast=None, prior_contrast=True)
    pairs = _pairs(path, spec.pairs, methods)

    reconstructions = spec.reconstructions if "reconstructions" in values else None
    recon_methods, recon_pairs = {}, {}
    if reconstructions is not None:
        given = reconstructions.methods
        recon_seeds = seeds if reconstructions.seeds is None else tuple(int(s) for s in reconstructions.seeds)
        if not recon_seeds or len(set(recon_seeds)) != len(recon_seeds):
            raise EncodersError(f"{path}: reconstructions.seeds: give distinct seeds, got {list(recon_seeds)}")
        changes = {"seeds": recon_seeds}
        if reconstructions.contrast is not None:
            changes["contrast"] = float(reconstructions.contrast)
        if isinstance(given, dict) and given:
            for name, value in given.items():
                _method_name(path, str(name))
                recon_methods[str(name)] = _method(path, f"reconstructions.methods.{name}", value, **changes)
            recon_pairs = _pairs(path, None, recon_methods)
        else:
            unknown = [m for m in given if m not in methods]
            if unknown or not given:
                raise EncodersError(f"{path}: reconstructions.methods: name methods of `methods` {sorted(methods)}, "
                                    f"or declare them (name: {{class_path: ..., init_args: ...}}); got {given}")
            for name in given:
                try:
                    recon_methods[name] = methods[name].replace(**changes)
                except EncodersError as error:
                    raise EncodersError(f"{path}: reconstructions.methods: {name}: {one_line(error)}") from None
            recon_pairs = {label: pair for label, pair in pairs.items() if all(p in recon_methods for p in pair)}
        for first, second in (reconstructions.stop_at or {}).items():
            where = f"{path}: reconstructions.stop_at.{first}"
            if first not in recon_methods or second not in recon_methods or first == second:
                raise EncodersError(f"{where}: name two reconstruction methods of {sorted(recon_methods)}, got {first}: {second}")
            if second in reconstructions.stop_at:
                raise EncodersError(f"{where}: {second} stops at another method itself; it must run to its end")
            if not recon_methods[first].stops_early:
                raise EncodersError(f"{where}: {type(recon_methods[first]).__name__} runs a fixed schedule and cannot stop at "
                                    "an energy (gradient ascent can)")
    out_dir = Path(out if out is not None else spec.out)
    return CompareConfig(
        source=path, out=out_dir, models=Path(spec.models) if spec.models else out_dir / "models", device=spec.device,
        threads=None if spec.threads is None else int(spec.threads), data=data, architectures=architectures,
        generating_seeds=tuple(int(s) for s in spec.seeds.generating), held_out_seeds=tuple(int(s) for s in spec.seeds.held_out),
        trainer=trainer,
        early_stopping=None if "early_stopping" in nulls else dict(content.get("early_stopping") or {}), top_k=int(spec.meis.top_k),
        mei_seeds=seeds, contrast=contrast, keep=spec.meis.keep, methods=methods, pairs=pairs, meni=meni,
        reconstructions=reconstructions, reconstruction_methods=recon_methods, reconstruction_pairs=recon_pairs,
        natural_tiers=tuple(spec.scoring.natural_tiers),
        ground_truth=spec.scoring.ground_truth, similarity=None if "similarity" in nulls else spec.similarity,
        wandb=spec.wandb if "wandb" in values else None,
    )


def check_machine(config: CompareConfig) -> None:
    """What this machine must offer, checked before the first file is written or model trains: the device,
    the trainer's accelerator and devices, the data file, writable output folders."""
    from encoders.datasets.io import list_sessions
    from encoders.devices import usable_device
    from encoders.outputs import check_writable
    from encoders.training.cli import check_devices

    usable_device(config.device, f"{config.source}: device")
    check_devices(config.trainer)
    list_sessions(config.data["path"])  # the data file exists and is valid (one line naming it otherwise)
    check_writable(config.out)
    check_writable(config.models)
