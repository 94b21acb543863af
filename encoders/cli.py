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


def _ga_arguments(parser: argparse.ArgumentParser, contrast: float) -> None:
    """Gradient-ascent options shared by `mei` and `reconstruct` (see encoders.synthesis.GASettings)."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="initial-noise seeds (one image per seed)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.05, help="step size (pixel RMS, model units, per step)")
    parser.add_argument("--no-normalize-gradient", action="store_true", help="plain gradient steps (lr then scales the raw gradient)")
    parser.add_argument("--blur-sigma", type=float, default=1.0, help="Gaussian blur (pixels) of the gradient")
    parser.add_argument("--contrast", type=float, default=contrast, help="per-pixel RMS the image norm is set to")
    parser.add_argument("--norm", type=float, default=None, help="L2 norm of every image (overrides --contrast)")
    parser.add_argument("--no-clamp", action="store_true", help="do not clamp to the range of real pixels")
    parser.add_argument("--batch-size", type=int, default=128, help="images optimised together")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")


def _ga_settings(args: argparse.Namespace):
    from encoders.synthesis.gradient_ascent import GASettings

    return GASettings(
        seeds=tuple(args.seeds), steps=args.steps, optimizer=args.optimizer, lr=args.lr,
        normalize_gradient=not args.no_normalize_gradient, blur_sigma=args.blur_sigma,
        contrast=args.contrast, norm=args.norm, clamp=not args.no_clamp, batch_size=args.batch_size,
    )


def _egg_arguments(parser: argparse.ArgumentParser) -> None:
    """Energy-guided diffusion options (used with --method egg; see encoders.synthesis.methods.EGGSynthesis)."""
    parser.add_argument("--method", choices=["ga", "egg"], default="ga",
                        help="gradient ascent on pixels, or energy-guided diffusion from --prior")
    parser.add_argument("--prior", default=None, help="local diffusers folder of the diffusion prior (--method egg)")
    parser.add_argument("--egg-steps", type=int, default=50, help="respaced diffusion steps")
    parser.add_argument("--energy-scale", type=float, default=None,
                        help="guidance step length per diffusion step (default 2; 0.5 for --meni)")
    parser.add_argument("--egg-contrast", type=float, default=None,
                        help="rescale EGG images to this per-pixel RMS (MEIs default to --contrast; else the prior's own)")
    parser.add_argument("--egg-rescale-after", action="store_true",
                        help="guide at the prior's contrast and rescale only the final image (default: guide at the final norm)")


def _synthesis(args: argparse.Namespace, egg_contrast: float | None, energy_scale: float = 2.0):
    """GA settings, or an EGG synthesis when --method egg (GA-only flags are then rejected)."""
    settings = _ga_settings(args)
    if args.method == "ga":
        given = [flag for flag, value in (("--prior", args.prior), ("--egg-contrast", args.egg_contrast),
                                          ("--energy-scale", args.energy_scale),
                                          ("--egg-rescale-after", args.egg_rescale_after or None)) if value is not None]
        if given:
            raise EncodersError(f"{', '.join(given)} only apply to --method egg")
        return settings
    from encoders.synthesis.methods import EGGSynthesis

    if args.prior is None:
        raise EncodersError("--method egg needs --prior (a local diffusers folder, e.g. data/priors/natural32)")
    contrast = args.egg_contrast if args.egg_contrast is not None else egg_contrast
    return EGGSynthesis.load(args.prior, seeds=settings.seeds, num_steps=args.egg_steps, energy_scale=args.energy_scale if args.energy_scale is not None else energy_scale,
                             contrast=contrast, batch_size=settings.batch_size,
                             guide_at_norm=contrast is not None and not args.egg_rescale_after)


def _data_for(model, path: str):
    """The data file as a data module with the model's image geometry (its images are mapped to model space)."""
    from encoders.datasets.datamodule import RecordedDataModule

    transform = model.image_transform
    datamodule = RecordedDataModule(
        path, sessions=model.sessions, grayscale=transform.grayscale, crop=transform.crop, resize=transform.resize,
    )
    datamodule.setup("predict")
    return datamodule


def _mei(args: argparse.Namespace) -> int:
    from pathlib import Path

    from encoders.callbacks.mei import write_meis
    from encoders.callbacks.products import load_models
    from encoders.synthesis.targets import check_choice, resolve_targets

    if args.meni and args.method != "egg":
        raise EncodersError("--meni needs --method egg")
    # EGG MEIs are rescaled to the GA norm rule for a fair comparison; MENIs keep the prior's contrast
    method = _synthesis(args, None if args.meni else args.contrast, energy_scale=0.5 if args.meni else 2.0)
    targets = check_choice(args.neurons, args.top_k)
    if targets is None and args.data is None:
        raise EncodersError("--top-k needs --data to rank neurons by validation correlation")
    model = load_models(args.checkpoints)
    if targets is not None:
        resolve_targets(model, targets)  # unknown ids fail here, before data are read or anything is written
    model = model.to(args.device)
    datamodule = _data_for(model, args.data) if args.data else None
    product = "meni" if args.meni else "mei"
    made = write_meis(
        [Path(p) for p in args.checkpoints], model, Path(args.out), method, targets, args.top_k, datamodule,
        minimize=args.minimize, ground_truth=not args.no_ground_truth, product=product,
    )
    nc = Path(args.out) / f"{product}_{args.method}.nc"
    print(f"{nc}" + ("" if made else " (exists for these checkpoints and settings: kept)"))
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from pathlib import Path

    from encoders.callbacks.products import load_models
    from encoders.callbacks.reconstruction import write_reconstructions
    from encoders.synthesis.targets import check_sessions

    method = _synthesis(args, None)
    model = load_models(args.checkpoints)
    check_sessions(model, [args.session])
    model = model.to(args.device)
    datamodule = _data_for(model, args.data)
    made = write_reconstructions(
        [Path(p) for p in args.checkpoints], model, Path(args.out), method, datamodule, args.images,
        [args.session], args.target, args.metric,
    )
    print(f"{Path(args.out) / f'reconstruction_{args.method}.nc'}" + ("" if made else " (exists for these checkpoints and settings: kept)"))
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
    twin.add_argument("--image-size", type=int, default=32)
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

    mei = commands.add_parser("mei", help="MEIs (GA or EGG) of trained checkpoints (several = an ensemble)")
    mei.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    choice = mei.add_mutually_exclusive_group(required=True)
    choice.add_argument("--neurons", nargs="+", metavar="SESSION/ID", help="neurons by session and neuron id")
    choice.add_argument("--top-k", type=int, help="the K neurons best predicted on the validation tier of --data")
    mei.add_argument("--data", default=None, help="dataset file: needed by --top-k; a twin adds ground-truth scores")
    mei.add_argument("--out", required=True, help="output folder (mei_<method>.nc and .png)")
    mei.add_argument("--meni", action="store_true", help="most exciting naturalistic images (EGG with weak guidance)")
    mei.add_argument("--minimize", action="store_true", help="inhibitory images (lowest response) instead")
    mei.add_argument("--no-ground-truth", action="store_true", help="skip scoring on a twin's true neurons")
    _ga_arguments(mei, contrast=0.25)
    _egg_arguments(mei)
    mei.set_defaults(run=_mei)

    reconstruct = commands.add_parser("reconstruct", help="reconstruct test images from their responses (GA or EGG)")
    reconstruct.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    reconstruct.add_argument("--data", required=True, help="dataset file with the test images")
    reconstruct.add_argument("--session", required=True)
    reconstruct.add_argument("--images", type=int, default=4, help="the first N test images of the session")
    reconstruct.add_argument("--target", choices=["recorded", "predicted"], default="recorded",
                             help="recorded responses, or the model's predictions for the image")
    reconstruct.add_argument("--metric", choices=["mse", "correlation"], default="mse")
    reconstruct.add_argument("--out", required=True, help="output folder (reconstruction_<method>.nc and .png)")
    _ga_arguments(reconstruct, contrast=1.0)
    _egg_arguments(reconstruct)
    reconstruct.set_defaults(run=_reconstruct)

    compare = commands.add_parser("compare", help="train architectures x seeds; compare accuracy, GA vs EGG MEI transfer, similarity")
    from encoders.compare.command import add_arguments as compare_arguments, run as run_compare

    compare_arguments(compare)
    compare.set_defaults(run=run_compare)

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
