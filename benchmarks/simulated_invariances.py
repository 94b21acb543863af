"""The simulated-cell table: what VEIs and invariance manifolds find on cells whose invariances are known.

Cells (`encoders.simulated.SimulatedCells`, 1 x 32 x 32, 8 px wavelength, 4 px envelope) at orientations other
than the anchors' (0 degrees), each through the same products a trained model's neurons get:

- VEIs by gradient ascent (the product's defaults: K = 20, floor 0.85, 200 steps) and by EGG (`--prior`, 50 steps,
  floor set by GA's MEI), read on the diversity index (anchors: simple 0, complex 1, at the same size and norm);
- a 1-D invariance manifold per cell: whether it met the stopping rule (mean >= 0.9, every point >= 0.85 of the
  MEI), and along the loop the fitted Gabor's phase: its winding (the signed steps between neighbours summed:
  +-360 is one turn) and the largest step (a winding made of small steps is a sweep; steps near 180 are jumps,
  e.g. a flip of polarity), and the range of its orientation.

    python benchmarks/simulated_invariances.py                       # GA VEIs and manifolds
    python benchmarks/simulated_invariances.py --prior data/priors/natural32   # + EGG VEIs

Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encoders.errors import EncodersError  # noqa: E402
from encoders.products import ProductData, VEIs, make_products  # noqa: E402
from encoders.simulated import SimulatedCells, fit_phase_orientation  # noqa: E402
from encoders.simulated.cells import DEFAULT_FREQUENCY, DEFAULT_SIGMA, INVARIANT_TO  # noqa: E402
from encoders.synthesis import EGGSettings  # noqa: E402
from encoders.synthesis.diverse import vei_method  # noqa: E402

KINDS = ["simple", "complex", "orientation_invariant", "polarity_invariant", "orientation_only"]
ORIENTATIONS = [30.0, 60.0, 0.0, 120.0, 150.0]


def loop_steps(angles: np.ndarray, period: float) -> np.ndarray:
    """The shortest signed steps (degrees) between neighbours along a closed loop of angles."""
    steps = np.diff(np.concatenate([angles, angles[:1]]))
    return (steps + period / 2) % period - period / 2


def spread(angles: np.ndarray, period: float) -> float:
    """The smallest arc (degrees) holding every angle: period minus the widest empty gap."""
    ordered = np.sort(angles % period)
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + period]))
    return float(period - gaps.max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", help="a diffusion prior folder: add EGG VEIs")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/simulated_invariances"),
                        help="scratch folder for the products (kept: a second run only reads them)")
    args = parser.parse_args()
    cells = SimulatedCells(KINDS, size=32, orientation=ORIENTATIONS, phase=[90.0, 0.0, 0.0, 45.0, 0.0]).eval()
    neurons = [f"{cells.session}/{n}" for n in cells.neuron_ids(cells.session)]
    products = [VEIs(neurons=neurons, method=vei_method(), k=args.k)]
    if args.prior:
        products.append(VEIs(neurons=neurons, method=EGGSettings(prior=args.prior), k=args.k, reference=vei_method()))
    for product in products:  # a missing prior fails now, not after the GA VEIs
        product.method.check_available()
    columns, seconds = {}, {}
    for product in products:
        start = time.perf_counter()
        (made,) = make_products([product], [], cells, ProductData(), args.out)
        seconds[product.method.name] = f"{time.perf_counter() - start:.1f} s ({made.how})"
        columns[product.method.name] = made.results

    from encoders.products.manifolds import InvarianceManifolds  # noqa: E402

    start = time.perf_counter()
    (made,) = make_products([InvarianceManifolds(neurons=neurons)], [], cells, ProductData(), args.out)
    seconds["manifold"] = f"{time.perf_counter() - start:.1f} s ({made.how})"
    manifolds = made.results

    header = f"{'cell':22} {'invariant to':20} {'DI (GA)':>8} {'above':>6}"
    if "egg" in columns:
        header += f" {'DI (EGG)':>9} {'above':>6}"
    header += f" {'loop met rule':>13} {'phase winding':>13} {'largest step':>12} {'orient. range':>13}"
    print(f"1 x 32 x 32 simulated cells, K = {args.k}, floor 0.85; DI = diversity index (simple 0, complex 1); "
          f"above = VEIs >= floor; manifolds: 1-D loop, fitted Gabor (8 px wavelength, 4 px envelope) per point")
    print(header)
    for i, kind in enumerate(KINDS):
        ga = columns["ga"].isel(neuron=i)
        row = f"{kind:22} {', '.join(INVARIANT_TO[kind]) or '-':20} {float(ga.diversity_index):8.2f} {float(ga.fraction_above):6.0%}"
        if "egg" in columns:
            egg = columns["egg"].set_index(neuron="neuron_id")
            if kind in egg.neuron.values:
                cell = egg.sel(neuron=kind)
                row += f" {float(cell.diversity_index):9.2f} {float(cell.fraction_above):6.0%}"
            else:
                row += f" {'(unreached)':>16}"
        loop = manifolds.isel(neuron=i)
        images = torch.as_tensor(loop.image.values)
        fit = fit_phase_orientation(images, DEFAULT_FREQUENCY, DEFAULT_SIGMA, around=ORIENTATIONS[i])
        steps = loop_steps(fit.phase.numpy(), 360.0)
        orientation = spread(fit.orientation.numpy(), 180.0)
        row += f" {'yes' if bool(loop.reached) else 'no':>13} {steps.sum():13.0f} {np.abs(steps).max():12.0f} {orientation:13.1f}"
        print(row)
    print("time: " + ", ".join(f"{name} {value}" for name, value in seconds.items()) + f"; {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EncodersError as error:
        print(f"simulated_invariances: {error}", file=sys.stderr)
        sys.exit(2)
