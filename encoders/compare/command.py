"""The `encoders compare` command's options; the heavy imports wait until it runs, so other commands start fast."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `encoders compare`."""
    parser.add_argument("experiment", help="comparison YAML, e.g. experiments/compare_twin.yaml")
    parser.add_argument("--out", default=None, help="output folder (overrides the config's `out`)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `encoders compare`."""
    from encoders.compare.config import load_config
    from encoders.compare.run import run_compare

    run_compare(load_config(args.experiment, args.out))
    return 0
