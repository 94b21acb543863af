"""Train a small diffusion prior on natural images, on CPU: `python -m encoders.synthesis.prior_training --config experiments/prior_natural32.yaml`.

Data: grayscale crops of the photographs bundled in the scikit-image / scikit-learn wheels
(`natural_image_pool`, no download), plus, optionally, a lab's own stimuli read from dataset files
(`read_arrays(path, session, ["images", "tier"])`, one tier), so a prior can learn the stimulus set
the neurons were recorded with. Loss: DDPM epsilon prediction (mean squared error on the noise) at
uniformly drawn timesteps. The saved weights are an exponential moving average of the trained ones,
which gives much cleaner samples after short training runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from encoders.datasets.io import list_sessions, read_arrays
from encoders.datasets.natural_images import natural_image_pool
from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.synthesis.prior import DiffusionPrior

LOG_EVERY = 50  # optimiser steps per point of the stored loss curve


# ---- data -------------------------------------------------------------------------------------------
def dataset_images(path: str | Path, sessions: Sequence[str] | None, tier: str | None, size: int) -> np.ndarray:
    """A dataset file's own stimuli (grayscale, centre square crop, resized to size x size) as uint8."""
    sessions = list(sessions) if sessions else list_sessions(path)
    parts = []
    for session in sessions:
        arrays = read_arrays(path, session, ["images", "tier"])
        images = arrays["images"] if tier is None else arrays["images"][arrays["tier"] == tier]
        if images.ndim == 4 and images.shape[1] not in (1, 3):
            raise EncodersError(f"{path}: session {session!r} images must have 1 or 3 channels to train a prior")
        h, w = images.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = (top, h - side - top, left, w - side - left)
        pixels = ImageTransform(grayscale=True, crop=crop, resize=(size, size)).geometry(images)
        parts.append(pixels[:, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, size, size), np.uint8)


class PriorImages(Dataset):
    """uint8 (N, S, S) images -> float (1, S, S) in [-1, 1], flipped left-right with probability 1/2."""

    def __init__(self, images: np.ndarray):
        self.images = torch.as_tensor(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i].float()[None] / 127.5 - 1
        return x.flip(-1) if torch.rand(()) < 0.5 else x


# ---- model ------------------------------------------------------------------------------------------
def small_unet(
    sample_size: int, channels: int, block_out_channels: Sequence[int], layers_per_block: int, attention: bool,
    norm_num_groups: int,
) -> UNet2DModel:
    """An unconditional UNet2DModel; with `attention`, self-attention only at the lowest resolution."""
    depth = len(block_out_channels)
    last_down = "AttnDownBlock2D" if attention else "DownBlock2D"
    first_up = "AttnUpBlock2D" if attention else "UpBlock2D"
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * (depth - 1) + (last_down,),
        up_block_types=(first_up,) + ("UpBlock2D",) * (depth - 1),
        norm_num_groups=norm_num_groups, attention_head_dim=8,
    )


def noise_schedule(num_train_timesteps: int, beta_schedule: str) -> DDPMScheduler:
    # "trailing" spacing makes respaced sampling start at the last training timestep (pure noise).
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type="epsilon",
        clip_sample=True, timestep_spacing="trailing",
    )


class PriorTraining(pl.LightningModule):
    """DDPM epsilon-prediction training of a small UNet, with an EMA copy that becomes the prior.

    Args:
        sample_size, channels: prior image size and channels.
        block_out_channels, layers_per_block, attention, norm_num_groups: the UNet (see `small_unet`).
        num_train_timesteps, beta_schedule: the DDPM noise schedule ("linear", "squaredcos_cap_v2", ...).
        lr, warmup_steps, max_steps: AdamW with linear warm-up then cosine decay to 0 at max_steps.
        ema_decay: decay of the weight average that is saved.
    """

    def __init__(
        self,
        sample_size: int = 32,
        channels: int = 1,
        block_out_channels: Sequence[int] = (16, 32, 64),
        layers_per_block: int = 1,
        attention: bool = True,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        lr: float = 2e-3,
        warmup_steps: int = 100,
        max_steps: int = 3000,
        ema_decay: float = 0.999,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.unet = small_unet(sample_size, channels, block_out_channels, layers_per_block, attention, norm_num_groups)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.scheduler = noise_schedule(num_train_timesteps, beta_schedule)
        self.loss_curve: list[tuple[int, float]] = []  # (step, mean loss over the last LOG_EVERY steps)
        self._recent: list[float] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        noise = torch.randn_like(batch)
        t = torch.randint(0, self.hparams.num_train_timesteps, (batch.shape[0],), device=batch.device)
        noisy = self.scheduler.add_noise(batch, noise, t)
        loss = F.mse_loss(self.unet(noisy, t).sample, noise)
        self.log("train/loss", loss, prog_bar=True)
        self._recent.append(loss.item())
        return loss

    def on_train_batch_end(self, outputs: object, batch: torch.Tensor, batch_idx: int) -> None:
        step = self.global_step
        # the average starts short and lengthens, so early weights do not linger in it
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, current in zip(self.ema.parameters(), self.unet.parameters()):
                average.lerp_(current, 1 - decay)
        if len(self._recent) >= LOG_EVERY:
            self.loss_curve.append((step, float(np.mean(self._recent))))
            self._recent = []
            print(f"step {step}: loss {self.loss_curve[-1][1]:.4f}", flush=True)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=0.0)
        warmup, total = self.hparams.warmup_steps, self.hparams.max_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def prior(self) -> DiffusionPrior:
        """The EMA weights with the training noise schedule, as a standalone prior."""
        return DiffusionPrior(copy.deepcopy(self.ema), noise_schedule(self.hparams.num_train_timesteps, self.hparams.beta_schedule))


# ---- samples for people -----------------------------------------------------------------------------
@torch.no_grad()
def sample_grid(prior: DiffusionPrior, path: str | Path, num_steps: int, seed: int, n: int = 16, scale: int = 4) -> None:
    """Save a 4x4 PNG of unguided samples (each enlarged `scale` times, nearest neighbour)."""
    from encoders.synthesis.guided_diffusion import egg_sample

    result = egg_sample(prior, None, n_images=n, num_steps=num_steps, energy_scale=0.0, seeds=list(range(seed, seed + n)))
    images = ((result.prior_images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    side, rows = images.shape[-1], int(math.ceil(n / 4))
    grid = np.full((rows * (side + 2) + 2, 4 * (side + 2) + 2), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, 4)
        grid[2 + r * (side + 2) : 2 + r * (side + 2) + side, 2 + c * (side + 2) : 2 + c * (side + 2) + side] = image
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST).save(path)


# ---- entry point ------------------------------------------------------------------------------------
CONFIG_KEYS = {
    "top": {"seed", "threads", "out", "data", "model", "training"},
    "data": {"size", "pool_size", "pool_seed", "datasets", "batch_size"},
    "dataset": {"path", "sessions", "tier"},
    "model": {"block_out_channels", "layers_per_block", "attention", "norm_num_groups", "num_train_timesteps", "beta_schedule"},
    "training": {"max_steps", "max_minutes", "lr", "warmup_steps", "ema_decay", "sample_steps"},
}


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise EncodersError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def train_prior(config: dict, out: str | Path | None = None) -> Path:
    """Train a prior as the config says and save it (weights, samples.png, training_log.json); returns the folder."""
    _check_keys(config, CONFIG_KEYS["top"], "config")
    data, model, training = config["data"], config["model"], config["training"]
    _check_keys(data, CONFIG_KEYS["data"], "config data")
    _check_keys(model, CONFIG_KEYS["model"], "config model")
    _check_keys(training, CONFIG_KEYS["training"], "config training")
    out = Path(out if out is not None else config["out"])
    torch.set_num_threads(int(config.get("threads", 1)))
    pl.seed_everything(int(config.get("seed", 0)), workers=True)

    size = int(data["size"])
    parts = [natural_image_pool(int(data["pool_size"]), size, int(data["pool_seed"]))]
    for entry in data.get("datasets") or []:
        _check_keys(entry, CONFIG_KEYS["dataset"], "config data.datasets entry")
        parts.append(dataset_images(entry["path"], entry.get("sessions"), entry.get("tier", "train"), size))
    images = np.concatenate(parts)
    loader = DataLoader(PriorImages(images), batch_size=int(data["batch_size"]), shuffle=True, drop_last=True)

    module = PriorTraining(
        sample_size=size, channels=1, max_steps=int(training["max_steps"]), lr=float(training["lr"]),
        warmup_steps=int(training["warmup_steps"]), ema_decay=float(training["ema_decay"]),
        block_out_channels=tuple(model["block_out_channels"]), layers_per_block=int(model["layers_per_block"]),
        attention=bool(model["attention"]), norm_num_groups=int(model["norm_num_groups"]),
        num_train_timesteps=int(model["num_train_timesteps"]), beta_schedule=str(model["beta_schedule"]),
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=int(training["max_steps"]), max_epochs=-1,
        max_time={"minutes": float(training["max_minutes"])}, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, log_every_n_steps=LOG_EVERY,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(module, loader)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    prior = module.prior()
    prior.save(out)
    sample_grid(prior, out / "samples.png", num_steps=int(training["sample_steps"]), seed=0)
    log = {
        "images": int(len(images)), "size": size, "steps": int(module.global_step), "batch_size": int(data["batch_size"]),
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in module.unet.parameters()),
        "loss_curve": [[s, round(v, 5)] for s, v in module.loss_curve], "config": config,
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML with data, model and training sections")
    parser.add_argument("--out", default=None, help="output folder (default: the config's `out`)")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    folder = train_prior(config, args.out)
    print(f"prior saved to {folder}")


if __name__ == "__main__":
    main()
