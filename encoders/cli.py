"""The `encoders` console command: train, prepare and summarise datasets, make products, compare, train priors.

Every option is declared once, by the signature or dataclass it configures (jsonargparse reads
them for YAML files and flags alike; flags use underscores like `train.py`'s): `encoders mei`
takes the options of `encoders.products.MEIs`, `encoders vei` those of `VEIs`, `encoders manifold` those of `InvarianceManifolds`, `encoders reconstruct` those of
`Reconstructions`, `encoders prepare` those of the converters, `encoders prior train` those of
`encoders.synthesis.prior_training`. `encoders train ...` is `python train.py ...`.

User errors (bad files, arguments, ids) print one line naming what is wrong and where, and exit
with status 2, without a traceback; Ctrl-C prints one line and exits with 130.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from encoders.errors import EncodersError, cause_of, one_line
from encoders.interrupts import Interrupts
from encoders.yaml_files import load_yaml_file, strict_yaml


class CheckedConfigFile(ActionConfigFile):
    """`--config FILE` that names the file and its unknown keys in one line before jsonargparse reads it.

    jsonargparse (4.x) cannot report an unknown key of a config file given to a nested subcommand
    (`encoders prepare synthetic`, `encoders prior train`): it fails with a bare KeyError naming the
    outer subcommand. Checking the keys here also makes the message name the file.
    """

    def __call__(self, parser, cfg, values, option_string=None):
        check_config_keys(parser, values)
        super().__call__(parser, cfg, values, option_string)


def check_config_keys(parser: ArgumentParser, value: object) -> None:
    """EncodersError naming `value` (a YAML file) and every key of it that `parser` does not accept."""
    path = Path(str(value))
    if not path.is_file():
        return  # not a file (a YAML string, or missing): jsonargparse reports it
    content = load_yaml_file(path)
    if not isinstance(content, dict):
        return
    # options that take a value; groups (dataclass arguments) are the prefixes of their dotted names
    skip = ("_HelpAction", "_ActionHelpClassPath", "_ActionPrintConfig", "_ActionConfigLoad")
    dests = {action.dest for action in parser._actions
             if type(action).__name__ not in skip and not isinstance(action, ActionConfigFile)}
    unknown, allowed = [], set()

    def walk(mapping: dict, prefix: str) -> None:
        level = sorted({d[len(prefix):].split(".")[0] for d in dests if d.startswith(prefix)})
        for key, item in mapping.items():
            full = f"{prefix}{key}"
            if full in dests or key == "__path__":
                continue
            if isinstance(item, dict) and any(d.startswith(f"{full}.") for d in dests):
                walk(item, f"{full}.")
            else:
                unknown.append(full)
                allowed.update(f"{prefix}{name}" for name in level)

    walk(content, "")
    if unknown:
        raise EncodersError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _parser(description: str, config: bool = True) -> ArgumentParser:
    strict_yaml()
    parser = ArgumentParser(description=description, exit_on_error=False, default_env=False)
    if config:
        parser.add_argument("--config", action=CheckedConfigFile, help="YAML file whose keys set the options below")
    return parser


# ---- parsers ---------------------------------------------------------------------------------------
def _prepare_parser(commands) -> None:
    from encoders.datasets.cowley2023 import convert_cowley2023
    from encoders.datasets.nwb import convert_nwb
    from encoders.datasets.table import import_table
    from encoders.twin.generation import write_twin

    prepare = _parser("convert or generate a dataset file", config=False)
    commands.add_subcommand("prepare", prepare, help="convert or generate a dataset file")
    sources = prepare.add_subcommands(dest="source")
    cowley = _parser("the Cowley et al. 2023 macaque V4 release, in its own layout")
    cowley.add_function_arguments(convert_cowley2023, as_positional=True, skip={"sessions"})
    # Cowley session ids are numbers: `--sessions 210305` or `--sessions '[210305, 210325]'` (YAML reads ints)
    cowley.add_argument("--sessions", type=list[str | int] | str | int | None, default=None,
                        help="session ids to convert, e.g. '[210305, 210325]'; all when omitted")
    sources.add_subcommand("cowley2023", cowley, help="the Cowley et al. 2023 macaque V4 release")
    twin = _parser("a synthetic V4 digital twin with stored ground-truth neurons")
    twin.add_function_arguments(write_twin, as_positional=True)
    sources.add_subcommand("synthetic", twin, help="a synthetic V4 digital twin (ground-truth neurons)")
    nwb = _parser("NWB files (DANDI), one session each: spike counts per presentation, images in the file or a folder")
    nwb.add_function_arguments(convert_nwb, as_positional=True)
    sources.add_subcommand("nwb", nwb, help="NWB files (DANDI): spike counts per image presentation")
    table = _parser("a lab's own recordings: stimulus image files and response tables or arrays, described by a YAML "
                    "file (README, Your data)", config=False)
    table.add_function_arguments(import_table, as_positional=True)
    sources.add_subcommand("table", table, help="your own recordings: image files + response tables (a YAML file)")


def _product_parser(description: str, product: type, data_required: bool) -> ArgumentParser:
    parser = _parser(description)
    parser.add_argument("checkpoints", nargs="+", type=str, help="checkpoint files (several = an ensemble)")
    parser.add_argument("--data", type=str | None, default=None, required=data_required,
                        help="dataset file: test images and responses, neuron ranking; a twin adds ground-truth scores")
    parser.add_argument("--out", type=str, required=True, help="output folder (<stem>.nc and .png)")
    parser.add_argument("--device", type=str, default="cpu", help="torch device, e.g. cuda")
    parser.add_class_arguments(product, None, help=product.__doc__.splitlines()[0])
    return parser


def _export_parser() -> ArgumentParser:
    from encoders.export import export_stimuli

    parser = _parser("rig stimuli from MEI products: 8-bit PNGs in the dataset's pixel space, natural controls, a manifest")
    parser.add_argument("checkpoints", nargs="+", type=str, help="the checkpoints that made the products (several = an ensemble)")
    parser.add_function_arguments(export_stimuli, skip={"checkpoints"}, as_positional=False)
    for action in parser._actions:  # a bare `--add` means `--add true`
        if action.dest == "add":
            action.nargs, action.const = "?", True
    return parser


def build_parser(only: str | None = None) -> ArgumentParser:
    """The `encoders` parser; with `only`, just that command's (each pulls in its own heavy imports:
    products load diffusers, priors their trainer), so `encoders info` does not wait for the rest."""
    parser = ArgumentParser(prog="encoders", description=__doc__.splitlines()[0], exit_on_error=False)
    commands = parser.add_subcommands(dest="command")

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("prepare"):
        _prepare_parser(commands)
    if wanted("info"):
        info = _parser("validate a dataset file and summarise its sessions", config=False)
        info.add_argument("path", type=str)
        commands.add_subcommand("info", info, help="validate a dataset file and summarise its sessions")
    if wanted("mei"):
        from encoders.products import MEIs

        commands.add_subcommand("mei", _product_parser("MEIs (GA or EGG) of trained checkpoints", MEIs, False),
                                help="MEIs, MENIs or inhibitory images (GA or EGG) of trained checkpoints")
    if wanted("vei"):
        from encoders.products import VEIs

        commands.add_subcommand("vei", _product_parser("varied exciting images (GA or EGG) of trained checkpoints", VEIs, False),
                                help="varied exciting images: K images per neuron above a floor of its MEI's rate, as unlike as possible")
    if wanted("manifold"):
        from encoders.products import InvarianceManifolds

        commands.add_subcommand("manifold", _product_parser("invariance manifolds of trained checkpoints", InvarianceManifolds, False),
                                help="invariance manifolds: per neuron a loop of images near its MEI's rate; neurons grouped by alignment")
    if wanted("reconstruct"):
        from encoders.products import Reconstructions

        reconstruct = _product_parser("reconstruct test images from their responses", Reconstructions, True)
        commands.add_subcommand("reconstruct", reconstruct, help="reconstruct test images from their responses (GA or EGG)")
    if wanted("export"):
        commands.add_subcommand("export", _export_parser(),
                                help="rig stimuli (PNGs + manifest) from MEI products and the dataset")
    if wanted("compare"):
        compare = _parser("train architectures x seeds; compare accuracy, GA vs EGG MEI transfer, similarity", config=False)
        compare.add_argument("experiment", type=str, help="comparison YAML, e.g. experiments/compare_twin.yaml")
        compare.add_argument("--out", type=str | None, default=None, help="output folder (overrides the config's `out`)")
        commands.add_subcommand("compare", compare, help="compare architectures: accuracy, MEI transfer, similarity")
    if wanted("similarity"):
        from encoders.similarity.captured import add_arguments as add_captured_arguments
        from encoders.similarity.optimize import add_arguments
        from encoders.similarity.region import add_arguments as add_region_arguments

        similarity = _parser("similarity-score tools (Cloos et al. 2024)", config=False)
        commands.add_subcommand("similarity", similarity, help="similarity-score tools (Cloos et al. 2024)")
        actions = similarity.add_subcommands(dest="action")
        optimize = _parser("maximise a score of synthetic data against a target")
        add_arguments(optimize)
        actions.add_subcommand("optimize", optimize, help="maximise a score of synthetic data against a target")
        captured = _parser("score needed to capture each principal component of a target, per measure")
        add_captured_arguments(captured)
        actions.add_subcommand("captured", captured,
                               help="explained variance of each target PC against the score, per measure")
        region = _parser("which pairs of two similarity scores can occur together (allowable region)")
        add_region_arguments(region)
        actions.add_subcommand("region", region,
                               help="upper and lower edge of measure A while measure B is held at each target")
    if wanted("twin"):
        from encoders.twin.recording import record_stimuli

        twin = _parser("the synthetic twin as an experimental animal", config=False)
        commands.add_subcommand("twin", twin, help="the synthetic twin: record a stimulus folder with its true neurons")
        twin_actions = twin.add_subcommands(dest="action")
        record = _parser("show a stimulus folder to a twin session's true neurons; write the twin plus that recording")
        record.add_function_arguments(record_stimuli, as_positional=True)
        twin_actions.add_subcommand("record", record, help="record a stimulus folder (e.g. exported MEIs) with the true neurons")
    if wanted("prior"):
        from encoders.synthesis.prior_quality import report
        from encoders.synthesis.prior_training import parser as prior_parser

        prior = _parser("diffusion image priors (for EGG)", config=False)
        commands.add_subcommand("prior", prior, help="train a diffusion image prior on dataset images")
        prior_actions = prior.add_subcommands(dest="action")
        prior_train = prior_parser()
        prior_train.exit_on_error = False
        for action in prior_train._actions:  # its --config names unknown keys and the file, like the others
            if type(action) is ActionConfigFile:
                action.__class__ = CheckedConfigFile
        prior_actions.add_subcommand("train", prior_train, help="train a diffusion prior on dataset images")
        quality = _parser("Fréchet distance and image statistics of a prior's samples vs held-out data images")
        quality.add_function_arguments(report, as_positional=False)
        prior_actions.add_subcommand("quality", quality, help="how natural a prior's samples are (vs held-out data)")
    return parser


# ---- commands --------------------------------------------------------------------------------------
def _prepare(options) -> int:
    from encoders.datasets.summary import print_summary

    options = options.prepare
    if options.source == "cowley2023":
        from encoders.datasets.cowley2023 import convert_cowley2023

        o = options.cowley2023
        out = _new_output_file(o.out)
        sessions = o.sessions if isinstance(o.sessions, list) or o.sessions is None else [o.sessions]
        sessions = [str(s) for s in sessions] if sessions is not None else None
        convert_cowley2023(o.source_dir, out, sessions=sessions, validation_fraction=o.validation_fraction,
                           test_fraction=o.test_fraction, seed=o.seed)
    elif options.source == "nwb":
        from encoders.datasets.nwb import convert_nwb

        o = options.nwb
        out = _new_output_file(o.out)
        convert_nwb(**{name: o[name] for name in inspect.signature(convert_nwb).parameters})
    elif options.source == "table":
        from encoders.datasets.table import import_table

        o = options.table
        out = _new_output_file(o.out)
        import_table(o.config, str(out), root=o.root)
    else:
        from encoders.twin.generation import write_twin

        o = {k: v for k, v in options.synthetic.as_dict().items() if k != "config"}
        out = _new_output_file(o["out"])
        write_twin(**o)
    print_summary(out)
    return 0


def _new_output_file(path: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise EncodersError(f"{path}: is a folder; give the data file to write")
    return path


def _output_folder(path: str) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EncodersError(f"--out {path}: exists and is not a folder")
    return path


def _products(options, which: str) -> int:
    from encoders.datasets.recording import Recording
    from encoders.devices import usable_device
    from encoders.ensemble import load_models
    from encoders.outputs import check_writable
    from encoders.products import InvarianceManifolds, MEIs, ProductData, Progress, Reconstructions, VEIs, make_products

    chosen = getattr(options, which)
    product_class = {"mei": MEIs, "vei": VEIs, "manifold": InvarianceManifolds, "reconstruct": Reconstructions}[which]
    product = product_class(**{name: chosen[name] for name in inspect.signature(product_class).parameters})
    out = _output_folder(chosen.out)
    device = usable_device(chosen.device)
    check_writable(out)
    product.method.check_available()  # e.g. a missing or broken prior fails now, not after ranking or scoring
    model = load_models(chosen.checkpoints)
    # the data in the model's own input space (its transform), checked to be the data it was trained on
    recording = Recording.for_model(chosen.data, model) if chosen.data is not None else None
    data = ProductData.of(recording, truth_store=out / "twin_truth")
    model = model.to(device)
    for made in make_products([product], [Path(p) for p in chosen.checkpoints], model, data, out, Progress()):
        print(made.line)
    return 0


def _compare(options) -> int:
    from encoders.compare.config import load_config
    from encoders.compare.run import run_compare

    run_compare(load_config(options.compare.experiment, options.compare.out))
    return 0


def _similarity(options) -> int:
    if options.similarity.action == "captured":
        from encoders.similarity.captured import run as captured

        return captured(options.similarity.captured)
    if options.similarity.action == "region":
        from encoders.similarity.region import run as region

        return region(options.similarity.region)
    from encoders.similarity.optimize import run

    return run(options.similarity.optimize)


def _prior(options) -> int:
    if options.prior.action == "quality":
        from encoders.synthesis.prior_quality import report

        report(**{k: v for k, v in options.prior.quality.as_dict().items() if k != "config"})
        return 0
    from encoders.synthesis.prior_training import run

    run(options.prior.train)
    return 0


def _twin(options) -> int:
    from encoders.datasets.summary import print_summary
    from encoders.twin.recording import record_stimuli

    o = {k: v for k, v in options.twin.record.as_dict().items() if k != "config"}
    o["split"] = options.twin.record.split
    names = record_stimuli(**o)
    print(f"recorded session(s) {names}")
    print_summary(o["out"])
    return 0


def _info(options) -> int:
    from encoders.datasets.summary import print_summary

    print_summary(options.info.path)
    return 0


def _export(options) -> int:
    from encoders.export import export_stimuli

    o = options.export
    print(export_stimuli(**{name: o[name] for name in inspect.signature(export_stimuli).parameters}).line)
    return 0


COMMANDS = {"prepare": _prepare, "info": _info, "mei": lambda o: _products(o, "mei"), "vei": lambda o: _products(o, "vei"),
            "manifold": lambda o: _products(o, "manifold"),
            "reconstruct": lambda o: _products(o, "reconstruct"), "compare": _compare, "similarity": _similarity, "twin": _twin,
            "prior": _prior, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from encoders.training.cli import main as train

        return train(argv[1:])
    from jsonargparse import ArgumentError

    with Interrupts() as interrupts:
        try:
            parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
            options = parser.parse_args(argv)
            try:
                options = parser.instantiate(options)
            except ValueError as error:  # a constructor's one-line error, wrapped by jsonargparse
                raise cause_of(error) or error from None
            return COMMANDS[options.command](options)
        except (ArgumentError, EncodersError, ValueError, FileNotFoundError) as error:
            # ValueError/FileNotFoundError: values the parser could not judge alone (fractions, sizes, paths)
            print(f"encoders: error: {one_line(error)}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, SystemExit) as stop:
            if not interrupts.stopped(stop):
                raise
            print(f"encoders: stopped by {interrupts.name}; files are written whole or not at all, and the same command "
                  "run again makes only what is missing", file=sys.stderr)
            return interrupts.status


if __name__ == "__main__":
    sys.exit(main())
