"""Invariance manifolds: all neurons' generators trained in one batch vs the same training one neuron at a time.

N simulated cells (`SimulatedCells`, the four kinds in turn, orientations spread over 180 degrees), their MEI
activations by gradient ascent, then `invariance_manifolds` for a fixed number of steps with early stopping
off, so that both modes do the same work: once with all N targets, once per target. Both use seed 0, so each
neuron's loop must be the same in both modes (up to float rounding).

    python benchmarks/manifold_batching.py [--neurons 8] [--size 32] [--steps 100] [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from encoders.simulated import KINDS, SimulatedCells
from encoders.synthesis import NeuronActivation, default_norm, optimize_images
from encoders.synthesis.manifolds import invariance_manifolds


def run(cells, targets, mei_activation, norm, steps, latent_dim, points):
    """Seconds and the result of one `invariance_manifolds` call over `targets`."""
    start = time.perf_counter()
    result = invariance_manifolds(cells, targets, mei_activation, norm, latent_dim=latent_dim, points=points, steps=steps,
                                  early_stopping=False)
    if mei_activation.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=8, help="N simulated cells")
    parser.add_argument("--size", type=int, default=32, help="images are 1 x size x size")
    parser.add_argument("--steps", type=int, default=100, help="training steps, the same for every neuron")
    parser.add_argument("--latent-dim", type=int, default=1, choices=(1, 2))
    parser.add_argument("--points", type=int, default=20, help="latents per loop (per dimension on a torus)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (same for both modes)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    n = args.neurons
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    cells = SimulatedCells(kinds, size=args.size, orientation=[180.0 * i / n for i in range(n)]).eval().to(args.device)
    targets = [(cells.session, neuron) for neuron in cells.neuron_ids(cells.session)]
    shape, norm = cells.input_shape, default_norm(cells.input_shape)
    mei = optimize_images(NeuronActivation(cells, targets), n, shape, 0, 100, lr=0.05, norm=norm, device=args.device)
    mei_activation = (-mei.energy).to(args.device)
    run(cells, targets[:1], mei_activation[:1], norm, 2, args.latent_dim, args.points)  # warm-up

    batched_s, batched = run(cells, targets, mei_activation, norm, args.steps, args.latent_dim, args.points)
    loop_s, images = 0.0, []
    for i in range(n):
        seconds, alone = run(cells, targets[i:i + 1], mei_activation[i:i + 1], norm, args.steps, args.latent_dim, args.points)
        loop_s += seconds
        images.append(alone.images)
    difference = (batched.images - torch.cat(images)).abs().max().item()

    count = len(batched.latents)
    print(f"Invariance manifolds: {n} simulated cells ({', '.join(sorted(set(kinds)))}), input {tuple(shape)}, "
          f"{count} latents ({args.latent_dim}-D), {args.steps} steps, no early stopping, {args.threads} CPU thread(s), "
          f"device {args.device}")
    print(f"{'mode':<24}{'neurons':>8}{'seconds':>10}{'s / neuron':>12}{'s / neuron / 100 steps':>24}")
    for mode, seconds in (("batched (all at once)", batched_s), ("loop (one at a time)", loop_s)):
        print(f"{mode:<24}{n:>8}{seconds:>10.2f}{seconds / n:>12.3f}{100 * seconds / n / args.steps:>24.3f}")
    print(f"speed-up of batching: {loop_s / batched_s:.1f}x; max |batched - loop| image difference {difference:.1e}")


if __name__ == "__main__":
    main()
