"""Does the submission's GA (SGD at lr 10 on the raw gradient, `GASubmission`) converge on these models, and what
does its step mean here?

SGD's lr 10 was set for the paper's models (1x100x100 inputs, their response units). `GASubmission` rescales it by
the pixel count (`GASettings.lr_pixels`), which keeps the step's displacement the same fraction of the image norm
for the same image at another resolution. Whether the models' gradients are as large as the paper's cannot be
checked (their weights are not public), so this measures, on a comparison's generating ensemble:

- the first step's displacement relative to the image norm (|lr * blurred gradient| / norm; per MEI, median), and
- the ensemble activation along 1,000 steps (and 3,000) at 0.1x, 1x and 10x the derived step, against today's GA
  (100 normalised SGD steps) on the same neurons and seeds.

    python benchmarks/ga_submission_step.py runs/compare_twin --architecture gaussian
    python benchmarks/ga_submission_step.py runs/compare_cowley --architecture attention

Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encoders.checkpoints import load_encoder  # noqa: E402
from encoders.ensemble import Ensemble  # noqa: E402
from encoders.errors import EncodersError  # noqa: E402
from encoders.synthesis import GASubmission, NeuronActivation  # noqa: E402
from encoders.synthesis.blur import gaussian_blur  # noqa: E402
from encoders.synthesis.gradient_ascent import initial_images, optimize_images  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a comparison's output folder (models/<arch>/seed<k>/checkpoints/best.ckpt)")
    parser.add_argument("--architecture", default="gaussian")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the generating members")
    parser.add_argument("--neurons", type=int, default=10, help="the first N neurons of the first session")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 300, 1000, 3000])
    args = parser.parse_args()
    paths = [args.run / "models" / args.architecture / f"seed{s}" / "checkpoints" / "best.ckpt" for s in args.seeds]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"ga_submission_step: {missing[0]}: no such checkpoint (run the comparison first)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    ensemble = Ensemble([load_encoder(p) for p in paths]).eval()
    session = ensemble.sessions[0]
    ids = ensemble.neuron_ids(session)[: args.neurons]
    seeds = [0, 1]
    targets = [(session, n) for n in ids for _ in seeds]
    seed_list = [s for _ in ids for s in seeds]
    shape = tuple(ensemble.input_shape)
    energy = NeuronActivation(ensemble, targets)
    preset = GASubmission()
    norm = preset.image_norm(shape)

    # the first step's displacement / norm at the derived lr (the image starts at the norm, as in every GA here)
    images = initial_images(len(targets), shape, seed_list)
    images = images * (norm / images.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    images.requires_grad_(True)
    (gradient,) = torch.autograd.grad(energy(images).sum(), images)
    blurred = gaussian_blur(gradient, preset.blur_sigma).flatten(1).norm(dim=1)
    ratio = (preset.step_size(shape) * blurred / norm).median().item()
    print(f"{args.run} {args.architecture}: input {shape}, norm {norm:.3g}, derived SGD lr {preset.step_size(shape):.4g} "
          f"(10 x {shape[0] * shape[1] * shape[2]} / 10000); first-step displacement / norm, median over "
          f"{len(targets)} MEIs: {ratio:.3g} (AdamW lr 10 at contrast 0.25: {10 / 0.25:.0f})")

    reference = optimize_images(energy, len(targets), shape, seed_list, 100, "sgd", 0.05, 1.0, norm,
                                None, "cpu", True)
    converged = (-reference.energy).mean().item()
    print(f"today's GA (100 normalised SGD steps): ensemble activation {converged:.3f} (= 1.00 below)\n")
    longest = max(args.steps)
    print("| step (x derived) | lr | " + " | ".join(f"after {s}" for s in args.steps) + " | seconds |")
    print("|---|---|" + "---|" * (len(args.steps) + 1))
    for factor in (0.1, 1.0, 10.0):
        lr = factor * preset.step_size(shape)
        start = time.perf_counter()
        result = optimize_images(energy, len(targets), shape, seed_list, longest, "sgd", lr, preset.blur_sigma, norm,
                                 None, "cpu", False)
        seconds = time.perf_counter() - start
        trace = torch.cat([-result.trace, -result.energy[None]])  # activation after j steps, j = 0..longest
        cells = [f"{trace[s].mean().item() / converged:.3f}" for s in args.steps]
        print(f"| {factor:g} | {lr:.3g} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EncodersError as error:
        print(f"ga_submission_step: {error}", file=sys.stderr)
        sys.exit(2)
