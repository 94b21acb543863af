"""MEI throughput: batched gradient ascent over all neurons vs the same optimiser one neuron at a time.

A Cowley-sized model (9 sessions, 421 neurons) with the core and readout of
experiments/cowley_attention.yaml, random weights by default. Batched: every neuron in one run
(`--batch-size` images at a time). Loop: `--loop-neurons` neurons one by one, extrapolated to all.
Both use seed 0, so the loop's MEIs must equal the batched MEIs of the same neurons.

    python benchmarks/mei_throughput.py [--size 40] [--steps 50] [--threads 1] [--device cuda]
    python benchmarks/mei_throughput.py --data data/cowley2023_v4.h5 --checkpoint runs/.../last.ckpt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from encoders.datasets.transforms import ImageTransform
from encoders.checkpoints import load_encoder
from encoders.encoder import Encoder
from encoders.synthesis import GASettings, NeuronActivation, all_targets, optimize_in_batches

ROOT = Path(__file__).resolve().parents[1]
COWLEY_NEURONS = {  # session -> neurons, as in the Cowley et al. 2023 release (421 in all)
    "190925": 36, "190927": 31, "190928": 24, "190929": 33, "210224": 67,
    "210305": 70, "210322": 59, "210325": 50, "210621": 51,
}


def build_model(config: Path, size: int, data: str | None, checkpoint: str | None) -> Encoder:
    """The trained checkpoint if given; otherwise the config's architecture with random weights."""
    if checkpoint:
        return load_encoder(checkpoint)
    model_config = yaml.safe_load(config.read_text())["model"]
    if data:
        from encoders.datasets.datamodule import RecordedDataModule

        datamodule = RecordedDataModule(data, resize=(size, size))
        datamodule.setup("fit")
        sessions, transform = datamodule.session_info(), datamodule.transform
    else:
        sessions = {
            s: {"neuron_ids": [f"{s}-{i}" for i in range(n)], "mean_response": [3.0] * n, "n_train": 1000}
            for s, n in COWLEY_NEURONS.items()
        }
        transform = ImageTransform(resize=(size, size), mean=120.0, std=60.0)
    torch.manual_seed(0)
    model = Encoder(model_config["core"], model_config["readout"], sessions, [1, size, size], transform.state())
    return model.eval()


def run(model: Encoder, targets: list, settings: GASettings) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds, final activations and images of one batched run over `targets` (all seed 0)."""
    device = next(model.parameters()).device
    start = time.perf_counter()
    result = optimize_in_batches(
        lambda index: NeuronActivation(model, [targets[i] for i in index]), [settings.seeds[0]] * len(targets),
        model.input_shape, settings, settings.pixel_range(model.image_transform), device,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, -result.energy, result.images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "cowley_attention.yaml")
    parser.add_argument("--size", type=int, default=40, help="model input is 1 x size x size")
    parser.add_argument("--data", default=None, help="dataset file for real sessions and transform (optional)")
    parser.add_argument("--checkpoint", default=None, help="trained checkpoint instead of random weights (optional)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=512, help="images per batched run (all 421 by default)")
    parser.add_argument("--loop-neurons", type=int, default=20, help="neurons timed one at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (same for both)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(args.config, args.size, args.data, args.checkpoint).to(args.device)
    targets = all_targets(model)
    settings = GASettings(steps=args.steps, batch_size=args.batch_size)
    run(model, targets[:2], GASettings(steps=2))  # warm-up: allocator, kernels

    batched_s, batched_act, batched_images = run(model, targets, settings)
    stride = max(1, len(targets) // args.loop_neurons)  # spread the timed subset over all sessions
    subset = list(range(0, len(targets), stride))[: args.loop_neurons]
    loop_s, loop_act, loop_images = 0.0, [], []
    for i in subset:
        seconds, act, image = run(model, [targets[i]], settings)
        loop_s += seconds
        loop_act.append(act)
        loop_images.append(image)
    loop_act, loop_images = torch.cat(loop_act), torch.cat(loop_images)

    n = len(targets)
    batched_rate, loop_rate = n / batched_s, len(subset) / loop_s
    print(f"MEI throughput: {len(model.sessions)} sessions, {n} neurons, input {tuple(model.input_shape)}, "
          f"{args.steps} SGD steps, {args.threads} CPU thread(s), device {args.device}, {'trained' if args.checkpoint else 'random'} weights")
    print(f"{'mode':<22}{'neurons':>8}{'seconds':>10}{'neurons/s':>11}{'mean act (all)':>16}{'mean act (subset)':>19}")
    print(f"{'batched (all at once)':<22}{n:>8}{batched_s:>10.2f}{batched_rate:>11.2f}{batched_act.mean():>16.4f}"
          f"{batched_act[subset].mean():>19.4f}")
    print(f"{'loop (one at a time)':<22}{len(subset):>8}{loop_s:>10.2f}{loop_rate:>11.2f}{'-':>16}{loop_act.mean():>19.4f}")
    print(f"loop extrapolated to {n} neurons: {n / loop_rate:.1f} s; speed-up of batching: {batched_rate / loop_rate:.1f}x")
    print(f"max |batched - loop| on the subset: activation {(batched_act[subset] - loop_act).abs().max():.2e}, "
          f"image {(batched_images[subset] - loop_images).abs().max():.2e}")


if __name__ == "__main__":
    main()
