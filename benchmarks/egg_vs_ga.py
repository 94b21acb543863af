"""EGG vs gradient-ascent MEIs on a digital twin: predicted rate, TRUE rate, and wall time per method.

For N neurons (first N in model order, or the N best predicted on validation) it makes one MEI per
neuron with each method and scores it on the trained model and on the twin's ground-truth neurons:

  data image      the training image the model predicts the highest rate for (reference)
  GA              gradient ascent on pixels (encoders.synthesis.gradient_ascent, its defaults:
                  SGD, blurred gradient, norm = contrast 0.25 * sqrt(C*H*W), clamp to pixel range)
  EGG             energy-guided diffusion from the prior, free contrast (what the prior draws)
  EGG @ GA norm   EGG whose guidance sees, and whose result is, images rescaled to GA's norm
  true MEI        GA on the twin's own neurons (upper bound for the GA norm)

    python benchmarks/egg_vs_ga.py --checkpoint runs/quickstart/checkpoints/last.ckpt \\
        --data data/synthetic_v4.h5 --neurons 20 --prior data/priors/natural32

One model (or ensemble) at a time; `encoders compare` runs the same comparison over a grid of
architectures x seeds and scores every MEI on held-out seeds, other architectures and the truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from encoders.datasets.datamodule import RecordedDataModule  # noqa: E402
from encoders.ensemble import load_models  # noqa: E402
from encoders.synthesis.energies import NeuronActivation  # noqa: E402
from encoders.synthesis.gradient_ascent import GASettings, optimize_images  # noqa: E402
from encoders.synthesis.guided_diffusion import egg_sample  # noqa: E402
from encoders.synthesis.prior import DiffusionPrior, ModelSpace  # noqa: E402
from encoders.synthesis.targets import all_targets, model_space_images, top_k_targets  # noqa: E402
from encoders.twin.scoring import GroundTruthActivation  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", required=True, help="one checkpoint, or several for an ensemble")
    parser.add_argument("--data", required=True, help="dataset file: a twin (scored on ground truth) or real data")
    parser.add_argument("--score-on", nargs="+", default=None,
                        help="for real data: held-out checkpoint(s) whose rates stand in for the true neurons")
    parser.add_argument("--neurons", type=int, default=20, help="number of neurons")
    parser.add_argument("--select", choices=("top", "first"), default="top",
                        help="top: best predicted on validation; first: model order")
    parser.add_argument("--prior", default="data/priors/natural32", help="local diffusers prior folder")
    parser.add_argument("--egg-steps", type=int, default=50)
    parser.add_argument("--energy-scale", type=float, default=2.0, help="L2 length of each guidance step (prior space)")
    parser.add_argument("--ga-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="neuron i uses seed + i (both methods)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = args.checkpoint
    model = load_models(paths)
    transform, shape = model.image_transform, tuple(model.input_shape)
    datamodule = RecordedDataModule(args.data, sessions=model.sessions, grayscale=transform.grayscale,
                                    crop=transform.crop, resize=transform.resize)
    datamodule.setup("predict")
    if args.select == "top":
        targets, _ = top_k_targets(model, datamodule, args.neurons)
    else:
        targets = all_targets(model)[: args.neurons]
    n = len(targets)
    seeds = [args.seed + i for i in range(n)]
    twin = datamodule.twin
    if twin is not None:
        brain = GroundTruthActivation(twin.truth, twin.columns(model, targets), twin.geometry(model))
    elif args.score_on:
        # real data has no ground truth: a held-out model (other architecture or seeds) plays the brain
        held_out = load_models(args.score_on)
        brain = NeuronActivation(held_out, targets)
    else:
        raise SystemExit(f"{args.data} has no ground truth: name held-out checkpoints with --score-on")
    energy = NeuronActivation(model, targets)
    settings = GASettings(steps=args.ga_steps)
    norm, pixel_range = settings.image_norm(shape), settings.pixel_range(transform)
    prior = DiffusionPrior.load(args.prior)

    def best_data_images():
        best = torch.empty(n, *shape)
        for session in dict.fromkeys(s for s, _ in targets):
            images = model_space_images(model, datamodule, session, "train")["images"]
            with torch.no_grad():
                rates = torch.cat([model(x, session) for x in images.split(256)])
            for i, (s, neuron) in enumerate(targets):
                if s == session:
                    best[i] = images[rates[:, model.neuron_ids(session).index(neuron)].argmax()]
        return best

    def ga(on):
        return optimize_images(on, n, shape, seeds, settings.steps, settings.optimizer, settings.lr,
                               settings.blur_sigma, norm, pixel_range).images

    def egg(adapter, final_norm):
        return egg_sample(prior, energy, n, args.egg_steps, args.energy_scale, seeds, final_norm, adapter).images

    methods = {
        "data image": lambda: best_data_images(),
        "GA": lambda: ga(energy),
        "EGG": lambda: egg(ModelSpace.of(model), None),
        "EGG @ GA norm": lambda: egg(ModelSpace.of(model, norm), norm),
        "true MEI (GA on twin)" if twin is not None else "GA on held-out": lambda: ga(brain),
    }
    print(f"{n} neurons ({args.select}), model input {shape}, GA: {settings.steps} steps, norm {norm:.2f}; "
          f"EGG: {args.egg_steps} steps, energy_scale {args.energy_scale}, prior {prior.image_shape}")
    scored = "true" if twin is not None else "held-out"
    header = f"{'method':<22} {'model rate':>11} {scored + ' rate':>14} {'ratio to its MEI':>17} {'RMS contrast':>13} {'seconds':>8}"
    rows = {}
    for name, make in methods.items():
        images, seconds = timed(make)
        with torch.no_grad():
            rows[name] = (energy.activation(images), brain.activation(images), images.flatten(1).std(1), seconds)
    reference = rows[list(methods)[-1]][1]
    print(header)
    print("-" * len(header))
    for name, (model_rate, true_rate, contrast, seconds) in rows.items():
        print(f"{name:<22} {model_rate.mean():>11.2f} {true_rate.mean():>14.2f} {(true_rate / reference).median():>17.2f} "
              f"{contrast.mean():>13.2f} {seconds:>8.1f}")
    print(f"rates: mean over neurons (spikes per bin); ratio: {scored} rate / {scored} rate of the last row's MEI, "
          "median over neurons; contrast: per-pixel std, z units")


if __name__ == "__main__":
    main()
