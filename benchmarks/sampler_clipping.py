"""Is a prior safe to sample without clamping x0 (the EGG paper's `clip_denoised=False`)?

Steps a prior's respaced DDPM sampler by hand, unguided, with and without the clamp of x0_hat to [-1, 1]
(`DiffusionPrior.respaced(n, clip_sample=...)`), and prints alpha_bar, the RMS of x0_hat and of x_t at a
few steps. x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies the noise prediction's error by
1 / sqrt(abar); where abar is ~0 at the first step (a cosine schedule's last timestep), an unclamped x0_hat
enters x_t and sampling does not recover.

    python benchmarks/sampler_clipping.py data/priors/cowley48 --steps 100

Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.errors import EncodersError  # noqa: E402
from encoders.synthesis.prior import DiffusionPrior  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prior", help="a local diffusers prior folder")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prior = DiffusionPrior.load(args.prior)
    config = prior.scheduler.config
    print(f"{args.prior}: {config.beta_schedule}, {config.get('timestep_spacing')} spacing, prediction {config.prediction_type}, "
          f"clip_sample {config.clip_sample} in its config; {args.steps} steps, {args.samples} samples\n")
    print("| step | t | alpha_bar | x0_hat RMS, clamped | x_t RMS, clamped | x0_hat RMS, never clamped | x_t RMS, never clamped |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for clip in (True, False):
        scheduler = prior.respaced(args.steps, clip_sample=clip)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(args.samples, *prior.image_shape, generator=generator)
        shown = {0, 1, 2, args.steps // 10, args.steps // 2, args.steps - 1}
        for i, t in enumerate(scheduler.timesteps.tolist()):
            with torch.no_grad():
                output = prior(x, t)
                x0 = prior.predicted_clean(x, t, output)
            x0 = x0.clamp(-1, 1) if clip else x0
            x = scheduler.step(output, t, x, generator=generator).prev_sample
            if i in shown:
                rows.setdefault(i, [t, float(prior.scheduler.alphas_cumprod[t])]).extend(
                    [x0.pow(2).mean().sqrt().item(), x.pow(2).mean().sqrt().item()])
    for i, (t, abar, *rms) in sorted(rows.items()):
        print(f"| {i} | {t} | {abar:.2e} | " + " | ".join(f"{v:.3g}" for v in rms) + " |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EncodersError as error:
        print(f"sampler_clipping: {error}", file=sys.stderr)
        sys.exit(2)
