"""Diffusion-prior training on dataset images (resumable bit for bit), its quality figure, and the paper presets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from encoders.datasets.io import write_dataset
from encoders.synthesis import EGGSettings
from encoders.synthesis.prior_quality import frechet_distance, image_statistics, noise_like, quality, random_features
from encoders.synthesis.prior_training import DatasetImages, PriorData, dataset_images, random_crops

ROOT = Path(__file__).resolve().parents[1]


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Natural-ish uint8 images: low-pass filtered noise (a 1/f-like spectrum), varied contrast."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, size, size))
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    spectrum = np.fft.fft2(noise) / np.maximum(radius, 1 / size)
    images = np.fft.ifft2(spectrum).real
    images = (images - images.mean((1, 2), keepdims=True)) / images.std((1, 2), keepdims=True)
    return np.clip(128 + 40 * images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from conftest import make_session

    path = tmp_path_factory.mktemp("prior") / "images.h5"
    sessions = []
    for i in range(2):
        session = make_session(f"s{i}", n_images=40, size=16, seed=i)
        session.images = smooth_images(40, 16, seed=10 + i)
        sessions.append(session)
    write_dataset(path, sessions)
    return path


def test_dataset_images_take_only_the_chosen_tiers(image_file):
    train = dataset_images(DatasetImages(path=str(image_file)), 16, grayscale=True)
    everything = dataset_images(DatasetImages(path=str(image_file), tiers=["train", "validation", "test"]), 16, grayscale=True)
    assert train.shape == (2 * 24, 1, 16, 16) and train.dtype == torch.uint8  # 60% of 40 per session
    assert everything.shape[0] == 80


def test_random_crops_cover_the_scale_range_and_flip():
    images = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).expand(64, -1, -1, -1).to(torch.uint8)
    generator = torch.Generator().manual_seed(0)
    crops = random_crops(images, 8, (0.5, 1.0), True, generator)
    assert crops.shape == (64, 1, 8, 8) and crops.min() >= -1 and crops.max() <= 1
    whole = random_crops(images, 16, (1.0, 1.0), False, torch.Generator().manual_seed(0))
    assert torch.allclose((whole + 1) * 127.5, images.float(), atol=1e-3)  # scale 1, no flip: the image itself
    spread = crops.flatten(1).std(1)
    assert spread.max() > 1.3 * spread.min()  # different scales cut different pixel ranges


CONFIG = """\
data:
  size: 16
  datasets: [{{path: {path}, tiers: [train]}}]
  source_size: 16
  batch_size: 4
model: {{block_out_channels: [8, 16], norm_num_groups: 4, attention: false}}
optimisation: {{max_steps: 24, checkpoint_every: 6, warmup_steps: 5, sample_steps: 4}}
"""


def _train(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JSONARGPARSE_DEPRECATION_WARNINGS": "off"}
    return subprocess.Popen([sys.executable, "-m", "encoders.cli", "prior", "train", "--config", str(config), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_prior_training_resumes_bit_exact_after_a_kill(tmp_path, image_file):
    config = tmp_path / "prior.yaml"
    config.write_text(CONFIG.format(path=image_file))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _train(config, whole)
    run = _train(config, killed)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert reference.wait() == 0, reference.stderr.read()
    step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < step < 24  # killed mid-run
    resumed = _train(config, killed)
    assert resumed.wait() == 0, resumed.stderr.read()
    a = load_file(whole / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(killed / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("samples.png", "loss.png", "training_log.json", "model_index.json"):
        assert (killed / name).is_file()


def test_quality_of_data_beats_noise():
    """The quality figure ranks real images (a prior that samples its own data) above matched noise."""
    images = torch.as_tensor(smooth_images(192, 32, seed=3)).float()[:, None] / 127.5 - 1
    reference, same = images[:96], images[96:]
    features = random_features(1)
    real = quality(same, reference, features)
    noise = quality(noise_like(same), reference, features)
    assert real["frechet_distance"] < 0.5 * noise["frechet_distance"]
    assert real["spectrum_slope"] < -1.5 < noise["spectrum_slope"]  # 1/f images fall off, white noise is flat
    assert abs(image_statistics(same)["rms_contrast"] - noise["rms_contrast"]) < 3


def test_frechet_distance_is_zero_for_the_same_gaussian_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-3)  # |shift|^2 = 3 * 4


def test_paper_presets_are_each_versions_values():
    """Pierzchlewicz et al. 2023, sinzlab/energy-guided-diffusion: the submission's scripts/run_meis_*.py (166e360)
    and the rebuttal's = HEAD's scripts/meis_*.py (bf32c1d), scripts/menis.py; no preset mixes two versions."""
    from encoders.synthesis import EGGRebuttal, EGGSubmission, GARebuttal, GASubmission, MENIPaper

    sub, reb = GASubmission(), GARebuttal()
    assert (sub.steps, sub.optimizer, sub.lr, sub.normalize_gradient, sub.blur_sigma, sub.clamp) == (1000, "sgd", 10.0, False, 1.0, False)
    assert (reb.steps, reb.optimizer, reb.lr, reb.normalize_gradient, reb.blur_sigma, reb.clamp) == (1000, "adamw", 10.0, False, 1.0, False)
    for ga in (sub, reb):
        assert ga.image_norm((1, 100, 100)) == pytest.approx(25.0)  # ChangeNorm(25) on 100x100 images
    # SGD's lr 10 is for 1x100x100 images: the same image at 40x40 takes a step (6.25x fewer values) of 1.6
    assert sub.step_size((1, 100, 100)) == 10.0 and sub.step_size((1, 40, 40)) == pytest.approx(1.6)
    assert reb.step_size((1, 40, 40)) == 10.0  # Adam's step does not scale with the gradient
    shape = (1, 100, 100)
    egg_sub, egg_reb = EGGSubmission(prior="p"), EGGRebuttal(prior="p")
    assert egg_sub.step_length((3, 256, 256)) == pytest.approx(5.0) and egg_reb.step_length((3, 256, 256)) == pytest.approx(10.0)
    assert egg_sub.guide_norm(shape) == pytest.approx(25.0) and egg_reb.guide_norm(shape) is None  # HEAD: unnormalised x0
    for egg in (egg_sub, egg_reb):
        assert (egg.num_steps, egg.clip_denoised, egg.keep) == (100, False, "x0") and egg.norm(shape) == pytest.approx(25.0)
    meni = MENIPaper(prior="p", scale=1)
    assert (meni.num_steps, meni.clip_denoised, meni.keep, meni.contrast) == (50, False, "sample", None)
    assert meni.step_length((3, 256, 256)) == pytest.approx(1.0) and meni.guide_norm(shape) == pytest.approx(50.0)
    assert EGGSettings(prior="p").guide_norm(shape) == EGGSettings(prior="p").norm(shape)  # the default guides at the kept norm


def test_reconstruction_presets_keep_their_settings_on_the_command_line():
    """jsonargparse fills a new class's options from the command's default method (reconstruct: GA, 300 steps,
    contrast 1): the paper's GD reconstructions fix steps and contrast, so `--method GDReconstructionPaper` is the paper's."""
    from encoders.cli import build_parser

    parser = build_parser("reconstruct")
    options = parser.parse_args(["reconstruct", "x.ckpt", "--out", "o", "--data", "d.h5", "--method", "GDReconstructionPaper"])
    method = parser.instantiate(options).reconstruct.method
    assert (method.steps, method.contrast, method.optimizer, method.lr, method.parametrization) == (5000, 0.6, "adamw", 0.05, "blurred")


def test_old_preset_names_fail_naming_the_new_ones():
    from encoders.errors import EncodersError
    from encoders.synthesis import EGGPaper, GAPaper

    with pytest.raises(EncodersError, match="GARebuttal .* GASubmission"):
        GAPaper()
    with pytest.raises(EncodersError, match="EGGSubmission .* EGGRebuttal"):
        EGGPaper(seeds=(0, 1))


def test_presets_on_disk_match_the_code():
    """The YAML presets name the preset classes: the settings are declared once, in encoders/synthesis/presets.py;
    read by `encoders mei --config` (whose default method is GA: none of its defaults may leak into the preset)."""
    from encoders.cli import build_parser
    from encoders.synthesis import EGGRebuttal, EGGSubmission, GARebuttal, GASubmission, MENIPaper

    parser = build_parser("mei")
    presets = {"mei_ga_submission.yaml": GASubmission, "mei_ga_rebuttal.yaml": GARebuttal,
               "mei_egg_submission.yaml": EGGSubmission, "mei_egg_rebuttal.yaml": EGGRebuttal, "meni_paper.yaml": MENIPaper}
    assert sorted(presets) == sorted(p.name for p in (ROOT / "experiments/presets").glob("*.yaml"))
    for name, preset in presets.items():
        options = parser.parse_args(["mei", "x.ckpt", "--out", "out", "--config", str(ROOT / "experiments/presets" / name)])
        method = parser.instantiate(options).mei.method
        assert type(method) is preset and method.seeds == (0, 1, 2, 3)
        given = {"prior": method.prior} if isinstance(method, EGGSettings) else {}
        assert method.settings == preset(**given).replace(seeds=(0, 1, 2, 3), **({"scale": 5} if preset is MENIPaper else {})).settings


def test_prior_data_rejects_what_cannot_work(image_file):
    from encoders.errors import EncodersError
    from encoders.synthesis.prior_training import PriorModel, PriorOptimisation, check_options

    with pytest.raises(EncodersError, match="data.size"):
        check_options(PriorData(size=18), PriorModel(block_out_channels=[8, 16, 32]), PriorOptimisation())
    with pytest.raises(EncodersError, match="tiers"):
        dataset_images(DatasetImages(path=str(image_file), tiers=["training"]), 16, True)
