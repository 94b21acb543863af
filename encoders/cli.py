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

from encoders.errors import EncodersError


def _parser(description: str, config: bool = True) -> ArgumentParser:
    parser = ArgumentParser(description=description, exit_on_error=False, default_env=False)
    if config:
        parser.add_argument("--config", action=ActionConfigFile, help="YAML file whose keys set the options below")
    return parser


# ---- parsers ---------------------------------------------------------------------------------------
def _prepare_parser(commands) -> None:
    from encoders.datasets.cowley2023 import convert_cowley2023
    from encoders.twin.generation import write_twin

    prepare = _parser("convert or generate a dataset file", config=False)
    commands.add_subcommand("prepare", prepare, help="convert or generate a dataset file")
    sources = prepare.add_subcommands(dest="source")
    cowley = _parser("the Cowley et al. 2023 macaque V4 release, in its own layout")
    cowley.add_function_arguments(convert_cowley2023, as_positional=True)
    sources.add_subcommand("cowley2023", cowley, help="the Cowley et al. 2023 macaque V4 release")
    twin = _parser("a synthetic V4 digital twin with stored ground-truth neurons")
    twin.add_function_arguments(write_twin, as_positional=True)
    sources.add_subcommand("synthetic", twin, help="a synthetic V4 digital twin (ground-truth neurons)")


def _product_parser(description: str, product: type, data_required: bool) -> ArgumentParser:
    parser = _parser(description)
    parser.add_argument("checkpoints", nargs="+", type=str, help="checkpoint files (several = an ensemble)")
    parser.add_argument("--data", type=str | None, default=None, required=data_required,
                        help="dataset file: test images and responses, neuron ranking; a twin adds ground-truth scores")
    parser.add_argument("--out", type=str, required=True, help="output folder (<stem>.nc and .png)")
    parser.add_argument("--device", type=str, default="cpu", help="torch device, e.g. cuda")
    parser.add_class_arguments(product, None, help=product.__doc__.splitlines()[0])
    return parser


def build_parser() -> ArgumentParser:
    from encoders.products import MEIs, Reconstructions
    from encoders.synthesis.prior_training import parser as prior_parser

    parser = ArgumentParser(prog="encoders", description=__doc__.splitlines()[0], exit_on_error=False)
    commands = parser.add_subcommands(dest="command")
    _prepare_parser(commands)
    info = _parser("validate a dataset file and summarise its sessions", config=False)
    info.add_argument("path", type=str)
    commands.add_subcommand("info", info, help="validate a dataset file and summarise its sessions")
    commands.add_subcommand("mei", _product_parser("MEIs (GA or EGG) of trained checkpoints", MEIs, False),
                            help="MEIs, MENIs or inhibitory images (GA or EGG) of trained checkpoints")
    reconstruct = _product_parser("reconstruct test images from their responses", Reconstructions, True)
    commands.add_subcommand("reconstruct", reconstruct, help="reconstruct test images from their responses (GA or EGG)")
    compare = _parser("train architectures x seeds; compare accuracy, GA vs EGG MEI transfer, similarity", config=False)
    compare.add_argument("experiment", type=str, help="comparison YAML, e.g. experiments/compare_twin.yaml")
    compare.add_argument("--out", type=str | None, default=None, help="output folder (overrides the config's `out`)")
    commands.add_subcommand("compare", compare, help="compare architectures: accuracy, MEI transfer, similarity")
    similarity = _parser("similarity-score tools (Cloos et al. 2024)", config=False)
    commands.add_subcommand("similarity", similarity, help="similarity-score tools (Cloos et al. 2024)")
    actions = similarity.add_subcommands(dest="action")
    from encoders.similarity.optimize import add_arguments

    optimize = _parser("maximise a score of synthetic data against a target")
    add_arguments(optimize)
    actions.add_subcommand("optimize", optimize, help="maximise a score of synthetic data against a target")
    prior = _parser("diffusion image priors (for EGG)", config=False)
    commands.add_subcommand("prior", prior, help="train a diffusion image prior on dataset images")
    prior_actions = prior.add_subcommands(dest="action")
    prior_train = prior_parser()
    prior_train.exit_on_error = False
    prior_actions.add_subcommand("train", prior_train, help="train a diffusion prior on dataset images")
    from encoders.synthesis.prior_quality import report

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
        convert_cowley2023(o.source_dir, out, sessions=o.sessions, validation_fraction=o.validation_fraction,
                           test_fraction=o.test_fraction, seed=o.seed)
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
    out = _output_folder(chosen.out)
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
    model = model.to(chosen.device)
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


def _info(options) -> int:
    from encoders.datasets.summary import print_summary

    print_summary(options.info.path)
    return 0


COMMANDS = {"prepare": _prepare, "info": _info, "mei": lambda o: _products(o, "mei"),
            "reconstruct": lambda o: _products(o, "reconstruct"), "compare": _compare, "similarity": _similarity,
            "prior": _prior}


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from encoders.training.cli import main as train

        return train(argv[1:])
    from jsonargparse import ArgumentError

    try:
        parser = build_parser()
        options = parser.instantiate(parser.parse_args(argv))
        return COMMANDS[options.command](options)
    except (ArgumentError, EncodersError, ValueError, FileNotFoundError) as error:
        # ValueError/FileNotFoundError: values the parser could not judge alone (fractions, sizes, paths)
        print(f"encoders: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("encoders: interrupted; files are written whole or not at all, and a re-run makes only what is missing",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
