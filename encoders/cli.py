"""The `encoders` console command: train, prepare and summarise datasets, make products, compare, train priors.

Every option is declared once, by the signature or dataclass it configures (jsonargparse reads
them for YAML files and flags alike; flags use underscores like `train.py`'s): `encoders mei`
takes the options of `encoders.products.MEIs`, `encoders reconstruct` those of
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
        from encoders.similarity.optimize import add_arguments

        similarity = _parser("similarity-score tools (Cloos et al. 2024)", config=False)
        commands.add_subcommand("similarity", similarity, help="similarity-score tools (Cloos et al. 2024)")
        actions = similarity.add_subcommands(dest="action")
        optimize = _parser("maximise a score of synthetic data against a target")
        add_arguments(optimize)
        actions.add_subcommand("optimize", optimize, help="maximise a score of synthetic data against a target")
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
    from encoders.datasets.datamodule import RecordedDataModule
    from encoders.ensemble import load_models
    from encoders.products import MEIs, ProductData, Progress, Reconstructions, make_products

    chosen = getattr(options, which)
    product_class = {"mei": MEIs, "reconstruct": Reconstructions}[which]
    product = product_class(**{name: chosen[name] for name in inspect.signature(product_class).parameters})
    from encoders.devices import usable_device
    from encoders.outputs import check_writable

    out = _output_folder(chosen.out)
    device = usable_device(chosen.device)
    check_writable(out)
    product.method.check_available()  # e.g. a missing or broken prior fails now, not after ranking or scoring
    model = load_models(chosen.checkpoints)
    datamodule = None
    if chosen.data is None:
        product.check(model, ProductData())  # without data, ids are all there is to check
    if chosen.data is not None:
        transform = model.image_transform
        datamodule = RecordedDataModule(chosen.data, sessions=model.sessions, grayscale=transform.grayscale,
                                        crop=transform.crop, resize=transform.resize)
        datamodule.setup("predict")
        check_data(model, datamodule)
    model = model.to(device)
    for made in make_products([product], [Path(p) for p in chosen.checkpoints], model, ProductData.of(datamodule), out, Progress()):
        print(made.line)
    return 0


def check_data(model, datamodule) -> None:
    """A checkpoint used with a data file of other neurons or images fails in one line, before any work."""
    for session in model.sessions:
        if session not in datamodule.sessions:
            raise EncodersError(f"{datamodule.path}: has no session {session!r} of the checkpoint (it has {datamodule.sessions})")
        ids = list(datamodule.tables[session].neuron_ids)
        if ids != list(model.neuron_ids(session)):
            raise EncodersError(f"{datamodule.path}: session {session!r} has {len(ids)} neurons with other ids than "
                                f"the checkpoint's {len(model.neuron_ids(session))}; use the data the model was trained on")
    shape = tuple(datamodule.input_shape())
    if shape != tuple(model.input_shape):
        raise EncodersError(f"{datamodule.path}: images map to {shape} in model space, the checkpoint takes {tuple(model.input_shape)}")


def _compare(options) -> int:
    from encoders.compare.config import load_config
    from encoders.compare.run import run_compare

    run_compare(load_config(options.compare.experiment, options.compare.out))
    return 0


def _similarity(options) -> int:
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


COMMANDS = {"prepare": _prepare, "info": _info, "mei": lambda o: _products(o, "mei"),
            "reconstruct": lambda o: _products(o, "reconstruct"), "compare": _compare, "similarity": _similarity, "twin": _twin,
            "prior": _prior, "export": _export}


def fold_method_flags(argv: Sequence[str]) -> list[str]:
    """`--method VALUE` and `--method.X V` flags (and a config file's `method`), in order, as one `--method` mapping.

    jsonargparse (4.x) reads each `--method.X` flag of a union of settings types on its own: for
    EGGSettings a second flag drops the first (`--method.num_steps 5 --method.prior P` ran 50
    steps), or the class (`--method '{class_path: EGGSettings, ...}' --method.steps 5` ran GA).
    One mapping, read once, keeps every value and fails on a flag of another method.
    """
    import yaml

    def load(text: str) -> object:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return None

    flags = [i for i, a in enumerate(argv) if a.partition("=")[0] == "--method" or a.startswith("--method.")]
    if not any(argv[i].startswith("--method.") for i in flags):
        return list(argv)  # nothing to fold: jsonargparse reads --method values whole
    class_path, values = None, {}

    def take(method: object) -> None:
        nonlocal class_path, values
        if isinstance(method, str):
            method = {"class_path": method}
        if not isinstance(method, dict):
            return
        if "class_path" in method:
            if method["class_path"] != class_path:
                values = {}
            class_path = method["class_path"]
            method = method.get("init_args") or {}
        values.update(method)

    out, skip = [], set()
    for i, arg in enumerate(argv):
        if i in skip:
            continue
        flag, equals, value = arg.partition("=")
        if flag == "--config" and i < flags[0]:  # a config's method is where the flags start from
            path = Path(value if equals else (argv[i + 1] if i + 1 < len(argv) else ""))
            content = load(path.read_text()) if path.is_file() else None
            if isinstance(content, dict) and "method" in content:
                take(content["method"])
        if flag == "--method" or flag.startswith("--method."):
            if not equals and i + 1 < len(argv):
                value = argv[i + 1]
                skip.add(i + 1)
            if flag == "--method":
                take(load(value))
            else:
                values[flag[len("--method."):]] = value  # jsonargparse converts strings to the field's type
            if i == flags[0]:
                out.append("--method")
                out.append(None)  # the folded mapping goes here
            continue
        out.append(arg)
    import dataclasses
    import typing

    from encoders.synthesis.methods import Method

    fields = {cls: {f.name for f in dataclasses.fields(cls)} for cls in typing.get_args(Method)}
    named = {cls: names for cls, names in fields.items() if str(class_path).rsplit(".", 1)[-1] == cls.__name__}
    for cls, names in named.items():  # the method asked for by name takes only its own options
        if set(values) - names:
            raise EncodersError(f"--method: {sorted(set(values) - names)} not option(s) of {cls.__name__}, the method "
                                f"asked for; its options are {sorted(names)}")
    if class_path is None:  # the one settings type that has every key given (jsonargparse would guess wrong)
        fits = [cls for cls, names in fields.items() if set(values) <= names]
        if not fits:
            lacking = ", ".join(f"{cls.__name__} has no {sorted(set(values) - names)}" for cls, names in fields.items())
            raise EncodersError(f"--method: no one method takes all of {sorted(values)} ({lacking}); give one method's options")
        if len(fits) == 1:
            class_path = f"{fits[0].__module__}.{fits[0].__name__}"
    method = {"class_path": class_path, "init_args": values} if class_path else values
    out[out.index(None)] = yaml.safe_dump(method, default_flow_style=True, width=10**6).strip()
    return out




def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from encoders.training.cli import main as train

        return train(argv[1:])
    from jsonargparse import ArgumentError

    with Interrupts() as interrupts:
        try:
            parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
            if argv[:1] in (["mei"], ["reconstruct"]):
                argv = fold_method_flags(argv)
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
