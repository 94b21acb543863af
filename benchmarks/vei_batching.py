"""Seconds per neuron for varied exciting images on CPU: all neurons in one batch against one neuron at a time.

The same neurons, K, steps and seeds both ways (gradient ascent, the VEI product's default settings with fewer
steps); the images agree to float rounding (checked and printed), so only the time differs. The model is a
trained checkpoint (e.g. the twin's attention model) or, without one, simulated cells at 32 x 32.

    python benchmarks/vei_batching.py runs/compare_twin/models/attention/seed0/checkpoints/best.ckpt --neurons 8
    python benchmarks/vei_batching.py --neurons 8          # simulated complex cells

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

from encoders.errors import EncodersError  # noqa: E402
from encoders.synthesis.diverse import varied_exciting_images, vei_method  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="a trained checkpoint; none: simulated complex cells")
    parser.add_argument("--neurons", type=int, default=8)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if args.checkpoint is not None:
        from encoders.ensemble import load_models

        if not args.checkpoint.is_file():
            print(f"vei_batching: {args.checkpoint}: no such checkpoint", file=sys.stderr)
            return 2
        model = load_models([str(args.checkpoint)]).eval()
        session = model.sessions[0]
        targets = [(session, n) for n in model.neuron_ids(session)[: args.neurons]]
        name = str(args.checkpoint)
    else:
        from encoders.simulated import SimulatedCells

        model = SimulatedCells(["complex"] * args.neurons, size=32, orientation=torch.linspace(0, 180, args.neurons + 1)[:-1].tolist()).eval()
        targets = [(model.session, n) for n in model.neuron_ids(model.session)]
        name = f"{args.neurons} simulated complex cells"
    method = vei_method(steps=args.steps)
    reference = torch.ones(len(targets))  # a floor far below reach would not change the cost: rates relative to 1
    try:
        start = time.perf_counter()
        together = varied_exciting_images(model, targets, reference, method, k=args.k, seeds=0)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        alone = [varied_exciting_images(model, [t], reference[[i]], method, k=args.k, seeds=0) for i, t in enumerate(targets)]
        single = time.perf_counter() - start
    except EncodersError as error:
        print(f"vei_batching: {error}", file=sys.stderr)
        return 2
    difference = max(float((together.images[i] - a.images[0]).abs().max()) for i, a in enumerate(alone))
    n = len(targets)
    print(f"VEIs of {name}: {n} neurons x K={args.k}, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"{'':24} {'seconds':>9} {'s / neuron':>11}")
    print(f"{'one batch':24} {batched:9.2f} {batched / n:11.3f}")
    print(f"{'one neuron at a time':24} {single:9.2f} {single / n:11.3f}")
    print(f"speed-up {single / batched:.2f}x; largest pixel difference between the two {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
