"""Speed of the similarity measures on 1000x500 vs 1000x400 float64 inputs (seeded).

Prints, per registered measure: ms per forward call, ms per forward+backward (gradient w.r.t.
both inputs), and the time of rsatoolbox's equivalent where it has one (RDMs computed inside
the timed call, as our functions do).

    python benchmarks/similarity_speed.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from encoders.similarity import DIFFERENTIABLE, MEASURES  # noqa: E402


def timed_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up call (the warm-up alone if > 1 s)."""
    start = time.perf_counter()
    fn()
    warm_up = (time.perf_counter() - start) * 1e3
    if warm_up > 1000.0:
        return warm_up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def rsatoolbox_equivalents(x, y) -> dict[str, Callable[[], object]]:
    """rsatoolbox calls computing the same quantity as a registry measure (empty if absent)."""
    try:
        from rsatoolbox.data import Dataset
        from rsatoolbox.rdm import calc_rdm, compare
    except ImportError:
        return {}

    def rdm_compare(rdm_method: str, compare_method: str) -> Callable[[], object]:
        def call() -> object:
            rx = calc_rdm(Dataset(x), method=rdm_method)
            ry = calc_rdm(Dataset(y), method=rdm_method)
            return compare(rx, ry, method=compare_method)

        return call

    return {
        "rsa_pearson": rdm_compare("correlation", "corr"),
        "rsa_spearman": rdm_compare("correlation", "spearman"),
        # Bures similarity of the kernels behind squared-Euclidean RDMs = NBS
        "nbs": rdm_compare("euclidean", "bures"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    X = torch.randn(1000, 500, generator=g, dtype=torch.float64)
    Y = X[:, :400] @ torch.randn(400, 400, generator=g, dtype=torch.float64) / 20 + torch.randn(
        1000, 400, generator=g, dtype=torch.float64
    )
    reference = rsatoolbox_equivalents(X.numpy(), Y.numpy())
    print(f"X {tuple(X.shape)} vs Y {tuple(Y.shape)}, float64, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"{'measure':<26} {'value':>10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'rsatoolbox ms':>14}")
    for name, fn in MEASURES.items():
        value = fn(X, Y).item()
        forward = timed_ms(lambda: fn(X, Y), args.repeats)
        if DIFFERENTIABLE[name]:
            def both(fn=fn) -> None:
                Xg, Yg = X.clone().requires_grad_(True), Y.clone().requires_grad_(True)
                torch.autograd.grad(fn(Xg, Yg), (Xg, Yg))

            backward = f"{timed_ms(both, args.repeats):11.1f}"
        else:
            backward = f"{'n/a':>11}"
        ref = f"{'-':>14}"
        if name in reference:
            ref = f"{timed_ms(reference[name], args.repeats):14.1f}"
        print(f"{name:<26} {value:10.6f} {forward:10.1f} {backward} {ref}")


if __name__ == "__main__":
    main()
