"""Energy-guided diffusion: the prior's files, the model-space adapter, and the EGG sampler (tiny random UNets)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from encoders.datasets.transforms import ImageTransform
from encoders.encoder import Encoder
from encoders.errors import EncodersError
from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.guided_diffusion import egg_sample, guidance_gradient
from encoders.synthesis.prior import DiffusionPrior, ModelSpace, to_model_space
from encoders.synthesis.prior_training import (
    DatasetImages,
    PriorData,
    PriorModel,
    PriorOptimisation,
    PriorTraining,
    dataset_images,
    random_crops,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny UNets: thread start-up dominates on 2 shared cores

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "priors" / "natural32"
TRANSFORM = ImageTransform(grayscale=True, mean=100.0, std=50.0)
MODEL_SHAPE = (1, 12, 12)


def tiny_prior(channels: int = 1, seed: int = 0) -> DiffusionPrior:
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=16, in_channels=channels, out_channels=channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    return DiffusionPrior(unet, scheduler)


def tiny_model() -> Encoder:
    torch.manual_seed(0)
    n = 4
    sessions = {"s0": {"neuron_ids": [f"n{i}" for i in range(n)], "mean_response": [3.0] * n}}
    core = {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3}
    model = Encoder(core=core, readout={"type": "gaussian", "gauss_type": "isotropic"}, sessions=sessions,
                    input_shape=list(MODEL_SHAPE), transform=TRANSFORM.state())
    return model.eval()


def quadrant_brightness(images: torch.Tensor) -> torch.Tensor:
    """Minus the mean of the top-left quadrant: low energy = bright corner."""
    h, w = images.shape[-2:]
    return -images[..., : h // 2, : w // 2].mean((1, 2, 3))


# ---- (a) the guidance gradient --------------------------------------------------------------------------
def test_guidance_gradient_matches_finite_differences():
    prior = tiny_prior().double()
    adapter = ModelSpace(TRANSFORM, MODEL_SHAPE)
    target = torch.randn(2, *MODEL_SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def energy(images):
        return (torch.sin(images) - target).pow(2).mean((1, 2, 3))

    x = torch.randn(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = 60
    _, _, value, gradient = guidance_gradient(prior, energy, adapter, x, t, clip_denoised=False)

    def total(x_t):
        with torch.no_grad():
            return energy(adapter(prior.predicted_clean(x_t, t, prior(x_t, t)))).sum().item()

    assert value.shape == (2,)
    h = 1e-6
    for index in [(0, 0, 3, 4), (0, 0, 15, 0), (1, 0, 8, 8), (1, 0, 0, 11)]:
        step = torch.zeros_like(x)
        step[index] = h
        numeric = (total(x + step) - total(x - step)) / (2 * h)
        assert gradient[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)


# ---- (b) no guidance = plain DDPM -------------------------------------------------------------------------
def reference_ddpm(prior: DiffusionPrior, seeds: list[int], num_steps: int) -> torch.Tensor:
    scheduler = DDPMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(num_steps)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(1, 16, 16, generator=g) for g in generators])
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(prior.unet(x, t).sample, t, x, generator=generators).prev_sample
    return x


def test_zero_energy_scale_is_plain_ddpm_sampling():
    prior = tiny_prior()
    seeds = [3, 7, 11]
    reference = reference_ddpm(prior, seeds, num_steps=8)
    unguided = egg_sample(prior, None, n_images=3, num_steps=8, energy_scale=0.0, seeds=seeds)
    torch.testing.assert_close(unguided.prior_images, reference.clamp(-1, 1), atol=1e-6, rtol=0)
    # with an energy but zero scale: only the trace is added
    traced = egg_sample(prior, quadrant_brightness, n_images=3, num_steps=8, energy_scale=0.0, seeds=seeds)
    torch.testing.assert_close(traced.prior_images, reference.clamp(-1, 1), atol=1e-6, rtol=0)
    assert traced.trace.shape == (8, 3) and torch.isfinite(traced.trace).all()
    torch.testing.assert_close(traced.energy, quadrant_brightness(traced.images))
    with torch.inference_mode():  # as inside a Lightning callback
        inside = egg_sample(prior, quadrant_brightness, n_images=3, num_steps=8, energy_scale=0.0, seeds=seeds)
    torch.testing.assert_close(inside.prior_images, traced.prior_images, atol=0, rtol=0)


# ---- (c) samples are independent --------------------------------------------------------------------------
def test_each_sample_depends_only_on_its_own_seed_and_energy():
    prior, model = tiny_prior(), tiny_model()
    adapter = ModelSpace.of(model)

    def run(second: str):
        energy = NeuronActivation(model, [("s0", "n0"), ("s0", second)])
        return egg_sample(prior, energy, n_images=2, num_steps=6, energy_scale=2.0, seeds=[5, 6], adapter=adapter)

    a, b = run("n1"), run("n3")
    assert torch.equal(a.prior_images[0], b.prior_images[0])
    assert torch.equal(a.trace[:, 0], b.trace[:, 0])
    assert not torch.equal(a.prior_images[1], b.prior_images[1])
    assert a.images.shape == (2, *MODEL_SHAPE)


def test_norm_rescales_model_space_images():
    prior = tiny_prior()
    result = egg_sample(prior, quadrant_brightness, n_images=2, num_steps=3, energy_scale=1.0, seeds=[0, 1], norm=5.0,
                        adapter=ModelSpace(TRANSFORM, MODEL_SHAPE))
    torch.testing.assert_close(result.images.flatten(1).norm(dim=1), torch.full((2,), 5.0))
    torch.testing.assert_close(result.energy, quadrant_brightness(result.images))
    # guidance at another norm than the kept one: the trace still scores the image as it would be kept
    seen = []
    guided = egg_sample(prior, lambda x: seen.append(x.detach().flatten(1).norm(dim=1)) or quadrant_brightness(x),
                        n_images=2, num_steps=3, energy_scale=1.0, seeds=[0, 1], norm=5.0, guide_norm=3.0,
                        adapter=ModelSpace(TRANSFORM, MODEL_SHAPE))
    torch.testing.assert_close(seen[0], torch.full((2,), 3.0))  # the first call guides step 1 at guide_norm
    torch.testing.assert_close(seen[1], torch.full((2,), 5.0))  # the second scores that step's x0 at the kept norm
    torch.testing.assert_close(guided.images.flatten(1).norm(dim=1), torch.full((2,), 5.0))


def test_bad_arguments_are_rejected():
    prior = tiny_prior()
    with pytest.raises(EncodersError, match="energy_scale"):
        egg_sample(prior, None, n_images=1, num_steps=2, energy_scale=1.0)
    with pytest.raises(EncodersError, match="one seed per image"):
        egg_sample(prior, None, n_images=2, num_steps=2, energy_scale=0.0, seeds=[1])
    with pytest.raises(EncodersError, match="num_steps"):
        egg_sample(prior, None, n_images=1, num_steps=1000, energy_scale=0.0)


def public(config: dict) -> dict:
    """A diffusers config without its bookkeeping keys (`_use_default_values`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ---- (d) files ---------------------------------------------------------------------------------------------
def test_prior_save_load_round_trip(tmp_path):
    prior = tiny_prior()
    prior.save(tmp_path / "prior")
    assert (tmp_path / "prior" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DiffusionPrior.load(tmp_path / "prior")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(prior(x, 42), loaded(x, 42))
    assert public(loaded.scheduler.config) == public(prior.scheduler.config)


def test_prior_load_errors_name_the_file(tmp_path):
    with pytest.raises(EncodersError, match="not found"):
        DiffusionPrior.load(tmp_path / "nowhere")
    folder = tiny_prior().save(tmp_path / "prior")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not safetensors")
    with pytest.raises(EncodersError, match="diffusion_pytorch_model.safetensors"):
        DiffusionPrior.load(folder)
    weights.unlink()
    with pytest.raises(EncodersError, match="lacks .*diffusion_pytorch_model.safetensors"):
        DiffusionPrior.load(folder)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    tiny_prior().unet.save_pretrained(folder / "unet")
    with pytest.raises(EncodersError, match="scheduler_config.json"):
        DiffusionPrior.load(folder)


def test_flat_folder_loads(tmp_path):
    prior = tiny_prior()
    prior.unet.save_pretrained(tmp_path, safe_serialization=True)
    prior.scheduler.save_pretrained(tmp_path)
    loaded = DiffusionPrior.load(tmp_path)
    assert loaded.image_shape == (1, 16, 16)


# ---- (e) the shipped prior ---------------------------------------------------------------------------------
def test_shipped_prior_loads_offline_and_samples():
    prior = DiffusionPrior.load(SHIPPED)
    assert prior.image_shape == (1, 32, 32)
    assert (SHIPPED / "CARD.md").is_file() and (SHIPPED / "samples.png").is_file()
    result = egg_sample(prior, quadrant_brightness, n_images=2, num_steps=4, energy_scale=1.0, seeds=[0, 1],
                        adapter=ModelSpace(TRANSFORM, (1, 48, 48)))
    assert result.prior_images.shape == (2, 1, 32, 32) and result.images.shape == (2, 1, 48, 48)
    assert torch.isfinite(result.images).all() and torch.isfinite(result.trace).all()
    assert result.prior_images.abs().max() <= 1


# ---- (f) the adapter ---------------------------------------------------------------------------------------
def test_adapter_maps_range_shape_and_channels():
    black = -torch.ones(2, 1, 32, 32)
    out = to_model_space(black, TRANSFORM, (1, 48, 48))
    assert out.shape == (2, 1, 48, 48)
    torch.testing.assert_close(out, torch.full_like(out, (0 - 100.0) / 50.0))
    white = to_model_space(torch.ones(1, 1, 16, 16), TRANSFORM, (1, 16, 16))
    torch.testing.assert_close(white, torch.full_like(white, (255 - 100.0) / 50.0))

    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    rgb = torch.cat([gray, gray, gray], 1).requires_grad_(True)
    converted = to_model_space(rgb, TRANSFORM, (1, 24, 24))
    assert converted.shape == (2, 1, 24, 24)
    torch.testing.assert_close(converted, to_model_space(gray, TRANSFORM, (1, 24, 24)))
    converted.sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_three_channel_prior_guides_a_grayscale_model():
    prior, model = tiny_prior(channels=3), tiny_model()
    energy = NeuronActivation(model, [("s0", "n0"), ("s0", "n1")])
    result = egg_sample(prior, energy, n_images=2, num_steps=3, energy_scale=1.0, seeds=[0, 1], adapter=ModelSpace.of(model))
    assert result.prior_images.shape == (2, 3, 16, 16) and result.images.shape == (2, *MODEL_SHAPE)


# ---- (g) guidance lowers the energy ------------------------------------------------------------------------
def test_guidance_lowers_the_energy():
    prior = tiny_prior()
    adapter = ModelSpace(TRANSFORM, MODEL_SHAPE)
    seeds = [0, 1, 2, 3]
    plain = egg_sample(prior, quadrant_brightness, n_images=4, num_steps=10, energy_scale=0.0, seeds=seeds, adapter=adapter)
    guided = egg_sample(prior, quadrant_brightness, n_images=4, num_steps=10, energy_scale=2.0, seeds=seeds, adapter=adapter)
    assert (guided.energy < plain.energy).all()


# ---- training ----------------------------------------------------------------------------------------------
def test_prior_training_step_and_export(tmp_path, session_factory):
    from encoders.datasets.io import write_dataset

    path = tmp_path / "data.h5"
    write_dataset(path, [session_factory(size=20)])
    own = dataset_images(DatasetImages(str(path)), 16, grayscale=True)  # the train tier only, by default
    assert own.shape == (36, 1, 16, 16) and own.dtype == torch.uint8
    batch = random_crops(own[:4], 16, (0.5, 1.0), True, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 1, 16, 16) and batch.min() >= -1 and batch.max() <= 1

    data = PriorData(size=16, batch_size=4)
    model = PriorModel(block_out_channels=[8, 16], attention=True, norm_num_groups=4)
    module = PriorTraining(own, data, model, PriorOptimisation(max_steps=2), seed=0)
    first, again = module.draw(3), module.draw(3)  # step k's draws depend on (seed, k) only: resuming is exact
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[2], module.draw(4)[2])
    loss = module.training_step(None, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    folder = module.prior().save(tmp_path / "trained")
    assert DiffusionPrior.load(folder).image_shape == (1, 16, 16)


def test_unclipped_sampling_never_clamps_x0():
    """clip_denoised=False clamps x0_hat nowhere: not before the energy, not in the DDPM step (the prior's scheduler
    config says clip_sample: true, as the shipped priors' do), and keep="x0" hands back the last x0_hat as it was."""
    prior = tiny_prior()
    assert prior.scheduler.config.clip_sample  # the prior's own config would clamp
    seen = []

    def energy(images):
        seen.append(images.detach().clone())
        return -images.mean((1, 2, 3))  # pushes every pixel up: x0_hat leaves [-1, 1]

    kwargs = dict(n_images=2, num_steps=6, energy_scale=8.0, seeds=[0, 1])
    free = egg_sample(prior, energy, clip_denoised=False, keep="x0", **kwargs)
    guided = seen[:6]  # one x0_hat per step (the energy's input, identity adapter), then the final image
    assert max(float(x.abs().max()) for x in guided) > 1.5
    assert float(free.prior_images.max()) > 1.0  # the result leaves [-1, 1] ...
    torch.testing.assert_close(free.prior_images, guided[-1])  # ... because it is the last step's x0_hat, untouched

    # the same sampler with a scheduler that never clips: identical, so the override reached the DDPM step
    unclipping = DiffusionPrior(prior.unet, DDPMScheduler.from_config(prior.scheduler.config, clip_sample=False))
    reference = egg_sample(unclipping, lambda x: -x.mean((1, 2, 3)), clip_denoised=False, keep="x0", **kwargs)
    torch.testing.assert_close(reference.prior_images, free.prior_images)
    assert prior.respaced(6, clip_sample=False).config.clip_sample is False

    seen.clear()
    clipped = egg_sample(prior, energy, clip_denoised=True, keep="x0", **kwargs)
    assert all(float(x.abs().max()) <= 1.0 for x in seen)  # clipping on: every x0_hat in [-1, 1]
    assert not torch.allclose(clipped.prior_images, free.prior_images)


def test_unclipped_presets_never_clamp_x0(tmp_path):
    """The paper's presets (EGGSubmission, EGGRebuttal) sample without any clamp of x0_hat and keep the last one:
    with a prior whose scheduler config clamps, the model-space images their energy sees still go past pixel 255."""
    from encoders.synthesis import EGGRebuttal, EGGSubmission

    folder = tiny_prior().save(tmp_path / "prior")
    model = tiny_model()
    white = float(TRANSFORM.from_pixels(torch.tensor(255.0)))
    for preset in (EGGSubmission, EGGRebuttal):
        method = preset(prior=str(folder), seeds=(0, 1))
        assert method.settings["clip_denoised"] is False and method.settings["keep"] == "x0"
        seen = []

        def energy_for(index):
            activation = NeuronActivation(model, [("s0", "n0")] * len(index))
            return lambda x: seen.append(x.detach()) or activation(x)

        result = method.synthesize(energy_for, [0, 1], model)
        assert torch.isfinite(result.images).all()
        # EGGRebuttal's energy sees x0 unnormalised: pixels past 255 show that nothing clamped it
        if preset is EGGRebuttal:
            assert max(float(x.max()) for x in seen) > white
