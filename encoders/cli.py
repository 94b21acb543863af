"""The `encoders` console command: prepare datasets, summarise them, and make products.

User errors (bad files, arguments, ids) print one line naming what is wrong and where, and exit
with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from encoders.errors import EncodersError


def _prepare_cowley(args: argparse.Namespace) -> int:
    from encoders.datasets.cowley2023 import convert_cowley2023
    from encoders.datasets.summary import print_summary

    convert_cowley2023(
        args.source_dir, args.out, sessions=args.sessions, validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction, seed=args.seed,
    )
    print_summary(args.out)
    return 0


def _prepare_synthetic(args: argparse.Namespace) -> int:
    from encoders.datasets.summary import print_summary
    from encoders.datasets.twin import write_twin

    write_twin(
        args.out, n_sessions=args.sessions, neurons_per_session=args.neurons, images_per_session=args.images,
        image_size=args.image_size, seed=args.seed, validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction, test_repeats=args.test_repeats,
    )
    print_summary(args.out)
    return 0


def _info(args: argparse.Namespace) -> int:
    from encoders.datasets.summary import print_summary

    print_summary(args.path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encoders", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="convert or generate a dataset file").add_subparsers(
        dest="source", required=True, metavar="SOURCE"
    )
    cowley = prepare.add_parser("cowley2023", help="the Cowley et al. 2023 macaque V4 release, in its own layout")
    cowley.add_argument("source_dir", help="folder with images/, responses_repeat_averaged/ (and responses_raw/)")
    cowley.add_argument("out", help="output .h5 file (written atomically)")
    cowley.add_argument("--sessions", nargs="+", default=None, help="session ids (default: all)")
    cowley.add_argument("--validation-fraction", type=float, default=0.1)
    cowley.add_argument("--test-fraction", type=float, default=0.1)
    cowley.add_argument("--seed", type=int, default=0, help="seed of the per-session split")
    cowley.set_defaults(run=_prepare_cowley)

    twin = prepare.add_parser("synthetic", help="a synthetic V4 digital twin with stored ground-truth neurons")
    twin.add_argument("out", help="output .h5 file (written atomically)")
    twin.add_argument("--config", default=None, help="YAML whose keys set the options below (e.g. experiments/twin.yaml)")
    twin.add_argument("--sessions", type=int, default=3)
    twin.add_argument("--neurons", type=int, default=40, help="neurons per session")
    twin.add_argument("--images", type=int, default=1500, help="images per session")
    twin.add_argument("--image-size", type=int, default=48)
    twin.add_argument("--seed", type=int, default=0)
    twin.add_argument("--validation-fraction", type=float, default=0.1)
    twin.add_argument("--test-fraction", type=float, default=0.1)
    twin.add_argument("--test-repeats", type=int, default=10)
    twin.set_defaults(run=_prepare_synthetic)

    similarity = commands.add_parser("similarity", help="similarity-score tools (Cloos et al. 2024)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    optimize = similarity.add_parser("optimize", help="maximise a score of synthetic data against a target")
    from encoders.similarity.optimize import add_arguments, run

    add_arguments(optimize)
    optimize.set_defaults(run=run)

    info = commands.add_parser("info", help="validate a dataset file and summarise its sessions")
    info.add_argument("path")
    info.set_defaults(run=_info)
    return parser


def _apply_config(args: argparse.Namespace, argv: Sequence[str]) -> argparse.Namespace:
    """Options from a YAML file (keys = option names with '_'); flags given explicitly win."""
    import yaml

    try:
        with open(args.config) as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as error:
        raise EncodersError(f"{args.config}: cannot read config: {error.strerror}") from None
    allowed = {k for k in vars(args) if k not in ("config", "run", "command", "source", "out")}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise EncodersError(f"{args.config}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    given = {token.split("=")[0] for token in argv if token.startswith("--")}
    for key, value in values.items():
        if f"--{key.replace('_', '-')}" not in given:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            args = _apply_config(args, list(argv) if argv is not None else sys.argv[1:])
        return args.run(args)
    except EncodersError as error:
        print(f"encoders: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        # argument values the parser could not judge alone (fractions, sizes, paths)
        print(f"encoders: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
