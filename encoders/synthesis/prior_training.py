"""Train a diffusion image prior on a project's own stimuli: `encoders prior train --config experiments/prior_cowley48.yaml`.

Data: the images of chosen datasets, sessions and tiers (the train tier by default, never test
images unless asked), optionally plus crops of the photographs bundled in the scikit-image /
scikit-learn wheels. Every image is centre-square-cropped, made grayscale (or kept in colour) and
stored once in memory at `source_size`; each training draw is a random square crop of a random
scale and position, flipped left-right with probability 1/2, resized to `size`.

Every random draw of step k (which images, crops, flips, timesteps, noise) comes from a generator
seeded with (seed, k), so a run killed and resumed from its last checkpoint ends with the same
weights, bit for bit, as one never interrupted. Loss: DDPM epsilon prediction at uniform timesteps.
The saved weights are an exponential moving average of the trained ones.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch.utils.data import DataLoader

from encoders.datasets.io import list_sessions, read_arrays
from encoders.datasets.natural_images import natural_image_pool
from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.outputs import check_writable, write_text
from encoders.synthesis.prior import DiffusionPrior

LOG_EVERY = 50  # optimiser steps per point of the stored loss curve
TIERS = ("train", "validation", "test")


# ---- options ----------------------------------------------------------------------------------------
@dataclass
class DatasetImages:
    """Images of one project dataset file.

    Args:
        path: the HDF5 dataset file.
        sessions: sessions to take images from (None: all).
        tiers: tiers to take images from; test images are the models' held-out data, keep them out.
        allow_test: permit "test" in `tiers` (refused otherwise: a prior that saw the test images
            can leak them into MEIs and reconstructions scored on those images).
    """

    path: str
    sessions: list[str] | None = None
    tiers: list[str] = field(default_factory=lambda: ["train"])
    allow_test: bool = False


@dataclass
class PriorData:
    """What the prior learns from and how each draw is made.

    Args:
        size: prior image side (pixels).
        datasets: project dataset files whose images are used.
        pool_size: number of extra crops of the photographs bundled in the scikit-image / scikit-learn wheels.
        pool_seed: seed of those crops.
        source_size: side at which every image is kept in memory, before random crops (default 2 x size).
        scale: smallest and largest crop side, as fractions of the kept image's side.
        flip: flip left-right with probability 1/2.
        grayscale: one luminance channel (else three colour channels).
        batch_size: images per optimiser step.
    """

    size: int = 48
    datasets: list[DatasetImages] = field(default_factory=list)
    pool_size: int = 0
    pool_seed: int = 20230601
    source_size: int | None = None
    scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    grayscale: bool = True
    batch_size: int = 32


@dataclass
class PriorModel:
    """The UNet (diffusers `UNet2DModel`) and its DDPM noise schedule.

    Args:
        block_out_channels: channels per resolution level (each level halves the size).
        layers_per_block: ResNet layers per level.
        attention: self-attention at the lowest resolution only.
        norm_num_groups: GroupNorm groups.
        num_train_timesteps: DDPM training timesteps.
        beta_schedule: "linear", "scaled_linear" or "squaredcos_cap_v2" (cosine).
    """

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    layers_per_block: int = 1
    attention: bool = True
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"


@dataclass
class PriorOptimisation:
    """How long and how the prior trains.

    Args:
        max_steps: optimiser steps (the cosine learning-rate schedule ends here).
        max_minutes: wall-clock stop; the EMA weights at that point are saved (None: no limit).
        lr: AdamW peak learning rate.
        warmup_steps: linear warm-up steps.
        ema_decay: decay of the saved weight average.
        checkpoint_every: steps between resumable checkpoints (out/checkpoints/last.ckpt).
        sample_steps: respaced DDPM steps for the sample grid.
    """

    max_steps: int = 6000
    max_minutes: float | None = None
    lr: float = 2e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    sample_steps: int = 100


# ---- data -------------------------------------------------------------------------------------------
def _square(images: torch.Tensor, side: int, grayscale: bool) -> torch.Tensor:
    """(N, [C,] H, W) pixels -> (N, C', side, side) uint8: centre square crop, luminance or colour, antialiased resize."""
    h, w = images.shape[-2:]
    square = min(h, w)
    top, left = (h - square) // 2, (w - square) // 2
    crop = (top, h - square - top, left, w - square - left)
    out = []
    for start in range(0, len(images), 512):  # bounded memory for large files
        part = ImageTransform(grayscale=grayscale, crop=crop, resize=(side, side)).geometry(images[start : start + 512])
        out.append(part.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros((0, 1 if grayscale else 3, side, side), dtype=torch.uint8)


def dataset_images(entry: DatasetImages, side: int, grayscale: bool) -> torch.Tensor:
    """The chosen sessions' and tiers' images of one dataset file as (N, C, side, side) uint8."""
    unknown = sorted(set(entry.tiers) - set(TIERS))
    if unknown or not entry.tiers:
        raise EncodersError(f"{entry.path}: tiers must be a non-empty subset of {list(TIERS)}, got {entry.tiers}")
    available = list_sessions(entry.path)
    sessions = list(entry.sessions) if entry.sessions else available
    missing = sorted(set(sessions) - set(available))
    if missing:
        raise EncodersError(f"{entry.path}: no session(s) {missing}; sessions: {available}")
    parts = []
    for session in sessions:
        arrays = read_arrays(entry.path, session, ["images", "tier"])
        keep = np.isin(np.asarray(arrays["tier"]).astype(str), entry.tiers)
        images = torch.as_tensor(np.asarray(arrays["images"])[keep])
        if images.ndim == 4 and images.shape[1] not in (1, 3):
            raise EncodersError(f"{entry.path}: session {session!r} images must have 1 or 3 channels to train a prior")
        parts.append(_square(images.float(), side, grayscale))
    return torch.cat(parts)


def training_images(data: PriorData) -> torch.Tensor:
    """Every image the prior learns from, (N, C, source_size, source_size) uint8."""
    side = data.source_size or 2 * data.size
    parts = [dataset_images(entry, side, data.grayscale) for entry in data.datasets]
    if data.pool_size:
        if not data.grayscale:
            raise EncodersError("data.pool_size: the bundled photographs are grayscale; use grayscale: true or pool_size: 0")
        parts.append(torch.as_tensor(natural_image_pool(data.pool_size, side, data.pool_seed))[:, None])
    if not parts or sum(len(p) for p in parts) == 0:
        raise EncodersError("data: no images (give data.datasets or data.pool_size)")
    return torch.cat(parts)


def random_crops(images: torch.Tensor, size: int, scale: tuple[float, float], flip: bool, generator: torch.Generator) -> torch.Tensor:
    """A batch of random square crops of uint8 images, in [-1, 1]: (B, C, size, size).

    One batched affine resampling (bilinear): crop side s (fraction of the image) uniform in
    `scale`, position uniform where the crop fits, mirrored with probability 1/2.
    """
    n = images.shape[0]
    low, high = scale
    s = low + (high - low) * torch.rand(n, generator=generator)
    tx = (1 - s) * (2 * torch.rand(n, generator=generator) - 1)
    ty = (1 - s) * (2 * torch.rand(n, generator=generator) - 1)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -s, s) if flip else s
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, s, ty
    grid = F.affine_grid(theta, (n, images.shape[1], size, size), align_corners=False)
    pixels = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return pixels / 127.5 - 1


# ---- model ------------------------------------------------------------------------------------------
def small_unet(sample_size: int, channels: int, model: PriorModel) -> UNet2DModel:
    """An unconditional UNet2DModel; with `attention`, self-attention only at the lowest resolution."""
    depth = len(model.block_out_channels)
    last_down = "AttnDownBlock2D" if model.attention else "DownBlock2D"
    first_up = "AttnUpBlock2D" if model.attention else "UpBlock2D"
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(model.block_out_channels), layers_per_block=model.layers_per_block,
        down_block_types=("DownBlock2D",) * (depth - 1) + (last_down,),
        up_block_types=(first_up,) + ("UpBlock2D",) * (depth - 1),
        norm_num_groups=model.norm_num_groups, attention_head_dim=8,
    )


def noise_schedule(num_train_timesteps: int, beta_schedule: str) -> DDPMScheduler:
    # "trailing" spacing makes respaced sampling start at the last training timestep (pure noise).
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type="epsilon",
        clip_sample=True, timestep_spacing="trailing",
    )


class PriorTraining(pl.LightningModule):
    """DDPM epsilon-prediction training of a UNet, with an EMA copy that becomes the prior.

    The batch the loader yields is ignored: step k draws its images, crops, timesteps and noise
    from a generator seeded with (seed, k), which makes resuming exact.
    """

    def __init__(self, images: torch.Tensor, data: PriorData, model: PriorModel, optimisation: PriorOptimisation, seed: int):
        super().__init__()
        self.images, self.data, self.options, self.seed = images, data, optimisation, seed
        self.unet = small_unet(data.size, images.shape[1], model)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.scheduler = noise_schedule(model.num_train_timesteps, model.beta_schedule)
        self.loss_curve: list[tuple[int, float]] = []  # (step, mean loss over the last LOG_EVERY steps)
        self._recent: list[float] = []
        self.seconds = torch.zeros(2, dtype=torch.float64)  # wall and CPU time of all runs so far
        self._clock = (time.perf_counter(), time.process_time())
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long))  # last step whose weights the EMA holds

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step `step`'s clean images, timesteps and noise."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        index = torch.randint(len(self.images), (self.data.batch_size,), generator=generator)
        clean = random_crops(self.images[index], self.data.size, tuple(self.data.scale), self.data.flip, generator)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(clean),), generator=generator)
        return clean, t, torch.randn(clean.shape, generator=generator)

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        self._update_ema()  # with the weights of the previous step
        clean, t, noise = (x.to(self.device) for x in self.draw(self.global_step))
        noisy = self.scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(self.unet(noisy, t).sample, noise)
        if not torch.isfinite(loss):
            raise EncodersError(f"prior training: loss is {loss.item()} at step {self.global_step}; lower optimisation.lr")
        self._recent.append(loss.item())
        now = (time.perf_counter(), time.process_time())
        self.seconds += torch.tensor([now[0] - self._clock[0], now[1] - self._clock[1]], dtype=torch.float64)
        self._clock = now
        if len(self._recent) >= LOG_EVERY:
            step = self.global_step + 1
            self.loss_curve.append((step, float(np.mean(self._recent))))
            self._recent = []
            pace = self.seconds[0].item() / step
            print(f"prior step {step}/{self.options.max_steps}: loss {self.loss_curve[-1][1]:.4f}, "
                  f"~{pace * (self.options.max_steps - step) / 60:.0f} min left", flush=True)
        return loss

    def _update_ema(self) -> None:
        # Lazily, at the next step or the end: checkpoint callbacks run before a module's
        # on_train_batch_end, so an update there would be missing from a mid-run checkpoint.
        step = self.global_step
        if int(self.ema_step) >= step:
            return
        decay = min(self.options.ema_decay, step / (9 + step))  # short at first, so early weights do not linger
        with torch.no_grad():
            for average, current in zip(self.ema.parameters(), self.unet.parameters()):
                average.lerp_(current, 1 - decay)
        self.ema_step.fill_(step)

    def on_train_start(self) -> None:
        self._clock = (time.perf_counter(), time.process_time())

    def on_train_end(self) -> None:
        self._update_ema()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["loss_curve"] = torch.tensor(self.loss_curve, dtype=torch.float64).reshape(-1, 2)
        checkpoint["recent_losses"] = torch.tensor(self._recent, dtype=torch.float64)
        checkpoint["seconds"] = self.seconds.clone()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loss_curve = [(int(s), float(v)) for s, v in checkpoint["loss_curve"].tolist()]
        self._recent = checkpoint["recent_losses"].tolist()
        self.seconds = checkpoint["seconds"].clone()

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.options.lr, weight_decay=0.0)
        warmup, total = self.options.warmup_steps, self.options.max_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def prior(self) -> DiffusionPrior:
        """The EMA weights with the training noise schedule, as a standalone prior."""
        return DiffusionPrior(copy.deepcopy(self.ema), DDPMScheduler.from_config(self.scheduler.config))


# ---- entry point ------------------------------------------------------------------------------------
def train_prior(
    out: str | Path, data: PriorData, model: PriorModel, optimisation: PriorOptimisation, seed: int = 0, threads: int = 1,
) -> Path:
    """Train a prior (resuming from out/checkpoints/last.ckpt when there is one) and save it; returns `out`.

    Writes the diffusers folder (EMA weights), `training_log.json` (data, steps, time, loss curve),
    `loss.png` and `samples.png`.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    from encoders.training.checkpoint_io import use_atomic_checkpoints

    out = Path(out)
    torch.set_num_threads(threads)
    images = training_images(data)
    torch.manual_seed(seed)  # the UNet's initial weights
    module = PriorTraining(images, data, model, optimisation, seed)
    checkpoints = out / "checkpoints"
    saver = ModelCheckpoint(dirpath=checkpoints, save_last=True, save_top_k=0, every_n_train_steps=optimisation.checkpoint_every)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=optimisation.max_steps, max_epochs=-1,
        max_time={"minutes": optimisation.max_minutes} if optimisation.max_minutes else None,
        logger=False, callbacks=[saver], enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0,
    )
    use_atomic_checkpoints(trainer)
    resume = checkpoints / "last.ckpt"
    if resume.exists():
        check_resume(resume, module)
    # The loader only paces the loop: steps draw their own data (PriorTraining.draw).
    trainer.fit(module, DataLoader(range(optimisation.max_steps), batch_size=None),
                ckpt_path=str(resume) if resume.exists() else None, weights_only=True)
    trainer.save_checkpoint(resume)  # the final state, so a re-run has nothing left to do

    prior = module.prior()
    prior.save(out)
    from encoders.synthesis.prior_figures import loss_figure, sample_grid

    sample_grid(prior, out / "samples.png", num_steps=optimisation.sample_steps, seed=0)
    loss_figure(module.loss_curve, out / "loss.png")
    log = {
        "images": int(len(images)), "size": data.size, "steps": int(module.global_step),
        "batch_size": data.batch_size,
        "wall_seconds": round(module.seconds[0].item(), 1), "cpu_seconds": round(module.seconds[1].item(), 1),
        "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in module.unet.parameters()),
        "loss_curve": [[s, round(v, 5)] for s, v in module.loss_curve],
        "config": {"seed": seed, "data": asdict(data), "model": asdict(model), "optimisation": asdict(optimisation)},
    }
    write_text(json.dumps(log, indent=1) + "\n", out / "training_log.json")
    return out


def check_resume(path: Path, module: PriorTraining) -> None:
    """The checkpoint a run would resume from is this prior's own, or an EncodersError naming it.

    Read with `torch.load(weights_only=True)` (through `read_checkpoint`), so a file holding a
    pickled object is refused without running it; an encoder checkpoint, an empty file or one of a
    prior with other settings is refused too, before it could half-load into this run.
    """
    from encoders.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(path)
    if "loss_curve" not in checkpoint or "ema_step" not in checkpoint["state_dict"]:
        raise EncodersError(f"{path}: not a checkpoint of `encoders prior train`; move it away or choose another --out")
    expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in checkpoint["state_dict"].items()}
    if found != expected:
        differ = sorted(set(found) ^ set(expected)) or sorted(n for n in found if found[n] != expected[n])
        raise EncodersError(f"{path}: a prior checkpoint of other model settings (e.g. {differ[0]}); train with the "
                            "settings it was made with, or choose another --out")


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def check_options(data: PriorData, model: PriorModel, optimisation: PriorOptimisation) -> None:
    """Reject settings that cannot work or mean nothing, in one line naming the option, before any data is read."""
    levels = len(model.block_out_channels)
    if levels < 2:
        raise EncodersError("model.block_out_channels: at least 2 levels")
    if min(model.block_out_channels) < 1 or model.layers_per_block < 1 or model.norm_num_groups < 1:
        raise EncodersError("model: block_out_channels, layers_per_block and norm_num_groups must be positive")
    if data.size < 4 or data.size % 2 ** (levels - 1):
        raise EncodersError(f"data.size: {data.size} must be at least 4 and divisible by 2^{levels - 1} (the UNet halves it {levels - 1} times)")
    bad = [c for c in model.block_out_channels if c % model.norm_num_groups]
    if bad:
        raise EncodersError(f"model.block_out_channels: {bad} not divisible by model.norm_num_groups={model.norm_num_groups}")
    if model.num_train_timesteps < 2:
        raise EncodersError(f"model.num_train_timesteps: {model.num_train_timesteps}; a DDPM needs at least 2 (1000 is usual)")
    if model.beta_schedule not in BETA_SCHEDULES:
        raise EncodersError(f"model.beta_schedule: {model.beta_schedule!r} is not one of {list(BETA_SCHEDULES)}")
    low, high = data.scale
    if not 0 < low <= high <= 1:
        raise EncodersError(f"data.scale: need 0 < low <= high <= 1, got {list(data.scale)}")
    if data.batch_size < 1 or data.pool_size < 0:
        raise EncodersError(f"data: batch_size must be positive and pool_size non-negative, got {data.batch_size} and {data.pool_size}")
    if data.source_size is not None and data.source_size < data.size:
        raise EncodersError(f"data.source_size: {data.source_size} is smaller than data.size {data.size}")
    for entry in data.datasets:
        if "test" in entry.tiers and not entry.allow_test:
            raise EncodersError(f"data.datasets: {entry.path} asks for test-tier images, the models' held-out data; "
                                "set allow_test: true for that dataset to use them anyway")
    o = optimisation
    if o.max_steps < 1 or o.checkpoint_every < 1 or o.sample_steps < 1:
        raise EncodersError(f"optimisation: max_steps, checkpoint_every and sample_steps must be at least 1, "
                            f"got {o.max_steps}, {o.checkpoint_every}, {o.sample_steps}")
    if o.sample_steps > model.num_train_timesteps:
        raise EncodersError(f"optimisation.sample_steps: {o.sample_steps} exceeds model.num_train_timesteps {model.num_train_timesteps}")
    if not (math.isfinite(o.lr) and o.lr > 0) or o.warmup_steps < 0:
        raise EncodersError(f"optimisation: lr must be positive and finite, warmup_steps non-negative, got {o.lr}, {o.warmup_steps}")
    if not 0 <= o.ema_decay < 1:
        raise EncodersError(f"optimisation.ema_decay: {o.ema_decay} must be in [0, 1)")
    if o.max_minutes is not None and not o.max_minutes > 0:
        raise EncodersError(f"optimisation.max_minutes: {o.max_minutes} must be positive (or null: no limit)")


def parser():
    """The options of `encoders prior train`, declared once by the dataclasses above (YAML and flags alike)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="encoders prior train", description="Train a diffusion image prior on dataset images.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with out, seed, threads, data, model, optimisation")
    parser.add_argument("--out", type=str, required=True, help="output folder (diffusers prior, figures, checkpoints)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", type=PriorData, default=PriorData())
    parser.add_argument("--model", type=PriorModel, default=PriorModel())
    parser.add_argument("--optimisation", type=PriorOptimisation, default=PriorOptimisation())
    return parser


def run(options) -> Path:
    """Check the parsed and instantiated options, train, and return the prior's folder."""
    check_options(options.data, options.model, options.optimisation)
    check_writable(options.out)
    out = train_prior(options.out, options.data, options.model, options.optimisation, seed=options.seed, threads=options.threads)
    print(f"prior saved to {out}")
    return out
