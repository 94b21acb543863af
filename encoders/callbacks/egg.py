"""EGG products for every kept checkpoint, after fit: `<run>/products/<ckpt>/{mei,meni,reconstruction}_egg.nc` + PNG.

Energy-guided diffusion (Pierzchlewicz et al. 2023) with the same energies as the GA products and
the same labelled layout (method = "egg"), so GA and EGG files sit side by side:
- MEIs: strong guidance, final images rescaled to the GA norm rule, for a fair comparison;
- MENIs (most exciting naturalistic images): weaker guidance, the prior's own contrast;
- reconstructions (optional): the response-distance energy of the chosen test images.
On a synthetic twin MEIs and MENIs are scored on the true neurons exactly as the GA MEIs are.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from encoders.callbacks.mei import write_meis
from encoders.callbacks.products import CheckpointProducts
from encoders.callbacks.reconstruction import TARGETS, choose_test_images, write_reconstructions
from encoders.errors import EncodersError
from encoders.synthesis.energies import METRICS
from encoders.synthesis.methods import EGGSynthesis
from encoders.synthesis.prior import DiffusionPrior
from encoders.synthesis.targets import check_choice, resolve_targets

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule


class EGGCallback(CheckpointProducts):
    """After fit, EGG MEIs, MENIs and reconstructions for each kept checkpoint.

    Args:
        prior: local diffusers-format folder of the diffusion prior (e.g. data/priors/natural32).
        neurons / top_k: as in MEICallback.
        seeds: one sample per neuron (or test image) and seed.
        num_steps: respaced diffusion steps.
        energy_scale: guidance step for MEIs; meni_energy_scale: weaker guidance for MENIs (None = no MENIs).
        contrast: per-pixel RMS of MEIs in model space (the GA norm rule), so GA and EGG compare fairly.
        guide_at_norm: guide MEIs with each x0 estimate already at that contrast (the image finally
            kept); False guides at the prior's contrast and rescales at the end (much weaker MEIs).
        reconstruct: test images per session to reconstruct (or a mapping session -> test positions,
            as in ReconstructionCallback); None = no reconstructions.
        reconstruction_energy_scale, target, metric, sessions: the reconstructions' guidance step,
            target responses ("recorded" / "predicted"), response distance ("mse" / "correlation")
            and sessions (None = all).
        checkpoints: "best_and_last" or "all".
        ground_truth: on a twin, score MEIs on the true neurons (true MEIs found by GA with default settings).
    """

    name = "egg"

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
        guide_at_norm: bool = True,
        reconstruct: int | dict[str, list[int]] | None = None,
        reconstruction_energy_scale: float = 2.0,
        target: str = "recorded",
        metric: str = "mse",
        sessions: list[str] | None = None,
        checkpoints: str = "best_and_last",
        ground_truth: bool = True,
    ):
        super().__init__(checkpoints)
        if not Path(prior).is_dir():
            raise EncodersError(f"{prior}: diffusion prior folder not found")
        self.prior_path = prior
        self.targets = check_choice(neurons, top_k)
        self.top_k = top_k
        self.seeds = tuple(seeds) if seeds is not None else (0,)
        scales = [energy_scale, reconstruction_energy_scale] + ([meni_energy_scale] if meni_energy_scale is not None else [])
        if num_steps < 1 or min(scales) < 0:
            raise EncodersError("num_steps must be positive and energy scales non-negative")
        if target not in TARGETS:
            raise EncodersError(f"target must be one of {list(TARGETS)}, got {target!r}")
        if metric not in METRICS:
            raise EncodersError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        self.num_steps = num_steps
        self.scales = {"mei": energy_scale}
        if meni_energy_scale is not None:
            self.scales["meni"] = meni_energy_scale
        self.contrast = contrast
        self.guide_at_norm = guide_at_norm
        self.reconstruct = reconstruct
        self.reconstruction_energy_scale = reconstruction_energy_scale
        self.target = target
        self.metric = metric
        self.sessions = sessions
        self.ground_truth = ground_truth
        self._prior: DiffusionPrior | None = None

    def check(self, model: nn.Module, datamodule: RecordedDataModule | None) -> None:
        if self.targets is not None:
            resolve_targets(model, self.targets)
        elif datamodule is None:
            raise EncodersError("EGGCallback with top_k needs a data module to rank neurons")
        if self.reconstruct is not None:
            if datamodule is None:
                raise EncodersError("EGG reconstructions need a data module (test images and responses)")
            choose_test_images(model, datamodule, self.reconstruct, self.sessions)
        self._prior = DiffusionPrior.load(self.prior_path)  # a broken prior fails before training

    def synthesis(self, energy_scale: float, contrast: float | None) -> EGGSynthesis:
        if self._prior is None:
            self._prior = DiffusionPrior.load(self.prior_path)
        return EGGSynthesis(prior=self._prior, prior_path=self.prior_path, seeds=self.seeds, num_steps=self.num_steps,
                            energy_scale=energy_scale, contrast=contrast,
                            guide_at_norm=self.guide_at_norm and contrast is not None)

    def produce(self, paths: list[Path], model: nn.Module, datamodule: RecordedDataModule | None, folder: Path) -> list[Path]:
        figures = []
        for product, scale in self.scales.items():
            # MEIs at the GA norm (fair comparison); MENIs keep the prior's natural contrast
            synthesis = self.synthesis(scale, self.contrast if product == "mei" else None)
            figures += write_meis(paths, model, folder, synthesis, self.targets, self.top_k, datamodule,
                                  ground_truth=self.ground_truth, product=product)
        if self.reconstruct is not None:
            synthesis = self.synthesis(self.reconstruction_energy_scale, None)
            figures += write_reconstructions(paths, model, folder, synthesis, datamodule, self.reconstruct,
                                             self.sessions, self.target, self.metric)
        return figures
