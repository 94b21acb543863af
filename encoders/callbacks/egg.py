"""EGG products for every kept checkpoint, after fit: `<run>/products/<ckpt>/{mei,meni}_egg.nc` + PNG.

Energy-guided diffusion (Pierzchlewicz et al. 2023) with the same neuron-activation energy as the
GA MEIs and the same labelled layout (method = "egg"), so GA and EGG files sit side by side:
- MEIs: strong guidance, final images rescaled to the GA norm rule, for a fair comparison;
- MENIs (most exciting naturalistic images): weaker guidance, the prior's own contrast.
On a synthetic twin both are scored on the true neurons exactly as the GA MEIs are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from encoders.callbacks.figures import mei_figure
from encoders.callbacks.mei import CheckpointProducts, existing, fingerprint, mei_dataset, score_on_ground_truth
from encoders.datasets.twin import has_ground_truth
from encoders.errors import EncodersError
from encoders.outputs import save_figure, write_netcdf
from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.gradient_ascent import GASettings, default_norm
from encoders.synthesis.guided_diffusion import egg_sample
from encoders.synthesis.prior import DiffusionPrior, ModelSpace
from encoders.synthesis.targets import check_choice, resolve_targets, top_k_targets


class EGGCallback(CheckpointProducts):
    """After fit, EGG MEIs and (optionally) MENIs for each kept checkpoint.

    Args:
        prior: local diffusers-format folder of the diffusion prior (e.g. data/priors/natural32).
        neurons / top_k: as in MEICallback.
        seeds: one sample per neuron and seed.
        num_steps: respaced diffusion steps.
        energy_scale: guidance step for MEIs; meni_energy_scale: weaker guidance for MENIs (None = no MENIs).
        contrast: per-pixel RMS of MEIs in model space (the GA norm rule), so GA and EGG compare fairly.
        checkpoints: "best_and_last" or "all".
        ground_truth: on a twin, score on the true neurons (true MEIs found by GA with default settings).
    """

    name = "mei_egg"

    def __init__(
        self,
        prior: str,
        neurons: list[str] | None = None,
        top_k: int | None = None,
        seeds: list[int] | None = None,
        num_steps: int = 50,
        energy_scale: float = 2.0,
        meni_energy_scale: float | None = 0.5,
        contrast: float = 0.25,
        checkpoints: str = "best_and_last",
        ground_truth: bool = True,
    ):
        super().__init__(checkpoints)
        if not Path(prior).is_dir():
            raise EncodersError(f"{prior}: diffusion prior folder not found")
        self.prior_path = prior
        self.targets = check_choice(neurons, top_k)
        self.top_k = top_k
        self.seeds = list(seeds) if seeds is not None else [0]
        if num_steps < 1 or energy_scale < 0 or (meni_energy_scale is not None and meni_energy_scale < 0):
            raise EncodersError("num_steps must be positive and energy scales non-negative")
        self.num_steps = num_steps
        self.scales = {"mei": energy_scale}
        if meni_energy_scale is not None:
            self.scales["meni"] = meni_energy_scale
        self.contrast = contrast
        self.ground_truth = ground_truth
        self._prior: DiffusionPrior | None = None

    def check(self, model: nn.Module, datamodule) -> None:
        if self.targets is not None:
            resolve_targets(model, self.targets)
        elif datamodule is None:
            raise EncodersError("EGGCallback with top_k needs a data module to rank neurons")
        self._prior = DiffusionPrior.load(self.prior_path)  # a broken prior fails before training

    def produce(self, paths: list[Path], model: nn.Module, datamodule, folder: Path) -> list[Path]:
        prior = self._prior or DiffusionPrior.load(self.prior_path)
        scored = self.ground_truth and datamodule is not None and has_ground_truth(datamodule.path)
        figures = []
        for product, scale in self.scales.items():
            norm = default_norm(model.input_shape, self.contrast) if product == "mei" else None
            request = {"prior": self.prior_path, "steps": self.num_steps, "scale": scale, "norm": norm,
                       "seeds": self.seeds, "neurons": self.targets, "top_k": self.top_k, "ground_truth": scored}
            key = fingerprint(paths, request)
            nc = folder / f"{product}_egg.nc"
            if existing(nc, key) is not None:
                continue
            targets = self.targets if self.targets is not None else top_k_targets(model, datamodule, self.top_k)[0]
            pairs = [(t, seed) for t in targets for seed in self.seeds]
            energy = NeuronActivation(model, [t for t, _ in pairs])
            result = egg_sample(prior, energy, len(pairs), num_steps=self.num_steps, energy_scale=scale,
                                seeds=[seed for _, seed in pairs], norm=norm, adapter=ModelSpace.of(model))
            data = mei_dataset("egg", targets, self.seeds, result.images, -result.energy, -result.trace,
                               model.image_transform)
            data.attrs.update({"product": "most exciting images" if product == "mei" else "most exciting naturalistic images",
                               "minimize": 0, "egg_prior": self.prior_path, "egg_num_steps": self.num_steps,
                               "egg_energy_scale": scale, "egg_norm": norm if norm is not None else np.nan})
            if scored:
                data = score_on_ground_truth(data, model, datamodule.path, GASettings(seeds=tuple(self.seeds)))
            data.attrs.update({"checkpoint": "; ".join(str(p) for p in paths), "fingerprint": key})
            write_netcdf(data, nc)
            png = save_figure(mei_figure(data, method="egg"), nc.with_suffix(".png"))
            figures.append(png)
            rank_zero_info(f"EGG {product.upper()}s of {len(targets)} neurons -> {nc}")
        return figures
