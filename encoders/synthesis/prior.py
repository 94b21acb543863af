"""A diffusion image prior (diffusers UNet2DModel + DDPM noise schedule) and its bridge to a model's input space.

A prior lives in a local diffusers-format folder, either a pipeline folder

    model_index.json  unet/config.json  unet/diffusion_pytorch_model.safetensors  scheduler/scheduler_config.json

(what `DiffusionPrior.save` writes, also loadable by `diffusers.DDPMPipeline`) or a flat folder with
config.json, diffusion_pytorch_model.safetensors and scheduler_config.json side by side. Nothing is
ever downloaded: hub ids are refused, only folders on disk load.

Prior images are (B, C_prior, S, S) in [-1, 1]; `to_model_space` maps them into the encoding model's
z-scored input space, differentiably, so energies defined on the model apply to prior samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from encoders.datasets.transforms import LUMINANCE, ImageTransform
from encoders.errors import EncodersError
from encoders.outputs import write_text

WEIGHTS = "diffusion_pytorch_model.safetensors"
UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _unet_folder(folder: Path) -> Path:
    return folder / "unet" if (folder / "unet").is_dir() else folder


def _scheduler_file(folder: Path) -> Path:
    nested = folder / "scheduler" / SCHEDULER_CONFIG
    return nested if nested.is_file() else folder / SCHEDULER_CONFIG


class DiffusionPrior(nn.Module):
    """An unconditional denoiser with its training noise schedule.

    `scheduler` is the training schedule (all `num_train_timesteps`); samplers respace a fresh copy
    with `respaced(num_steps)`, so one prior serves any number of sampling steps at once.
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        super().__init__()
        prediction = scheduler.config.prediction_type
        if prediction not in PREDICTION_TYPES:
            raise EncodersError(f"prior scheduler prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction!r}")
        if getattr(unet.config, "num_class_embeds", None) or getattr(unet.config, "class_embed_type", None):
            raise EncodersError("the prior must be an unconditional UNet2DModel (this one is class-conditional)")
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler

    # ---- shape --------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> int:
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, S, S) of prior images."""
        return (self.channels, self.sample_size, self.sample_size)

    # ---- denoising ----------------------------------------------------------------------------------
    def respaced(self, num_steps: int, clip_sample: bool | None = None) -> DDPMScheduler:
        """A fresh DDPM scheduler over `num_steps` of the training timesteps (the prior's own is untouched).

        clip_sample: whether its step clamps x0_hat to [-1, 1]; None keeps the prior's scheduler config.
        """
        train_steps = int(self.scheduler.config.num_train_timesteps)
        if not 1 <= num_steps <= train_steps:
            raise EncodersError(f"num_steps must be in [1, {train_steps}] (the prior's training timesteps), got {num_steps}")
        changes = {} if clip_sample is None else {"clip_sample": bool(clip_sample)}
        scheduler = DDPMScheduler.from_config(self.scheduler.config, **changes)
        scheduler.set_timesteps(num_steps)
        return scheduler

    def forward(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The UNet's raw output at timestep t (channels doubled for learned-variance models)."""
        timesteps = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
        return self.unet(x_t, timesteps).sample

    def predicted_clean(self, x_t: torch.Tensor, t: int, output: torch.Tensor) -> torch.Tensor:
        """x0_hat from the UNet output, as the scheduler computes it (before any clipping)."""
        output = output[:, : x_t.shape[1]]  # learned-variance models append the variance channels
        alpha_bar = self.scheduler.alphas_cumprod[int(t)].to(device=x_t.device, dtype=x_t.dtype)
        prediction = self.scheduler.config.prediction_type
        if prediction == "epsilon":
            return (x_t - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
        if prediction == "v_prediction":
            return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * output
        return output

    # ---- files --------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write a diffusers pipeline folder (safetensors weights); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        index = {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "unet": ["diffusers", "UNet2DModel"],
        }
        write_text(json.dumps(index, indent=2) + "\n", folder / "model_index.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "DiffusionPrior":
        """Load a prior from a local folder (never the network); EncodersError names what is missing or broken."""
        folder = Path(folder)
        if not folder.is_dir():
            raise EncodersError(f"{folder}: diffusion prior folder not found (a local diffusers folder is needed; hub ids are not downloaded)")
        unet_folder = _unet_folder(folder)
        for name in (UNET_CONFIG, WEIGHTS):
            if not (unet_folder / name).is_file():
                raise EncodersError(f"{folder}: diffusion prior lacks {unet_folder / name}")
        scheduler_file = _scheduler_file(folder)
        if not scheduler_file.is_file():
            raise EncodersError(f"{folder}: diffusion prior lacks its noise schedule {folder / 'scheduler' / SCHEDULER_CONFIG}")
        try:
            class_name = json.loads((unet_folder / UNET_CONFIG).read_text()).get("_class_name", "UNet2DModel")
        except (OSError, ValueError) as error:
            raise EncodersError(f"{unet_folder / UNET_CONFIG}: unreadable UNet config ({error})") from None
        if class_name != "UNet2DModel":
            raise EncodersError(f"{unet_folder / UNET_CONFIG}: the prior must be an unconditional UNet2DModel, got {class_name}")
        try:
            unet = UNet2DModel.from_pretrained(
                unet_folder, local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
            )
        except Exception as error:  # diffusers and safetensors raise many types for broken files
            raise EncodersError(f"{unet_folder / WEIGHTS}: not a readable UNet2DModel ({type(error).__name__}: {error})") from None
        try:
            config = json.loads(scheduler_file.read_text())
            scheduler = DDPMScheduler.from_config(config)
        except Exception as error:
            raise EncodersError(f"{scheduler_file}: not a readable scheduler config ({type(error).__name__}: {error})") from None
        return cls(unet, scheduler).to(device)


@dataclass(frozen=True)
class ModelSpace:
    """Prior images -> an encoding model's input space; call it on (B, C_prior, S, S) in [-1, 1].

    Steps (all differentiable, dtype kept): [-1, 1] -> pixels 0..255 -> luminance if the model wants
    fewer channels (or grey copies if it wants three) -> bilinear antialiased resize to the model's
    (H, W) -> z-score with the model's training statistics. A prior image is taken to be the model's
    whole field of view, so the transform's crop (which applies to stored images) is not used.
    (At which norm guidance sees the images is the sampler's `guide_norm`.)
    """

    transform: ImageTransform
    input_shape: tuple[int, int, int]

    @classmethod
    def of(cls, model: nn.Module) -> "ModelSpace":
        """The adapter for an EncodingModel or Ensemble."""
        return cls(model.image_transform, tuple(model.input_shape))

    def __call__(self, x_prior: torch.Tensor) -> torch.Tensor:
        return to_model_space(x_prior, self.transform, self.input_shape)


def to_model_space(
    x_prior: torch.Tensor, transform: ImageTransform, model_input_shape: tuple[int, int, int]
) -> torch.Tensor:
    """(B, C_prior, S, S) prior images in [-1, 1] -> (B, *model_input_shape) model-space images."""
    channels, height, width = (int(s) for s in model_input_shape)
    if x_prior.ndim != 4 or x_prior.shape[1] not in (1, 3):
        raise ValueError(f"prior images must be (B, 1 or 3, H, W), got {tuple(x_prior.shape)}")
    pixels = (x_prior + 1) * 127.5
    if pixels.shape[1] == 3 and channels == 1:
        weights = torch.tensor(LUMINANCE, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        pixels = (pixels * weights).sum(1, keepdim=True)
    elif pixels.shape[1] == 1 and channels == 3:
        pixels = pixels.expand(-1, 3, -1, -1)
    elif pixels.shape[1] != channels:
        raise ValueError(f"cannot map {pixels.shape[1]}-channel prior images to a {channels}-channel model")
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return transform.from_pixels(pixels)
