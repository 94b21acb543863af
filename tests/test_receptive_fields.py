"""Receptive-field centres from the training data, and the Gaussian readout's init_mu "data" that starts there.

- the estimator (`encoders.datasets.receptive_fields`) finds generated contrast-driven neurons to ~2 px,
  with x and y the right way round, and sends neurons without a receptive field to the image centre;
- `pixels_to_grid` maps input pixels onto the stacked core's cropped feature grid (checked by hand, against
  the twin's geometry, and end to end by where a neuron's gradient lands in the image);
- init_mu "random" is what it was (the same draw as before for a fixed seed, centres or not), and "data"
  changes mu alone; "data" without centres is a one-line error naming the option;
- the data module adds plain-JSON "rf_centre" lists to the session info (in memory only), and a
  checkpoint without them (the legacy fixtures) still loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.checkpoints import load_encoder
from encoders.datasets.datamodule import RecordedDataModule
from encoders.datasets.io import write_dataset
from encoders.cores.output_shape import pixels_to_grid
from encoders.datasets.receptive_fields import _gaussian_blur, rf_centres, rf_estimate
from encoders.datasets.transforms import ImageTransform
from encoders.encoder import ConfigError, Encoder
from encoders.readouts import GaussianReadout

pytestmark = pytest.mark.usefixtures("one_thread")

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
HEIGHT, WIDTH = 36, 44  # not square: x and y must not be swapped
WINDOW = 5
# top-left corners (x, y) of each neuron's window: the four corners, the middle, and some in between
CORNERS = [(2, 2), (37, 2), (2, 29), (37, 29), (19, 15), (10, 20), (30, 8), (25, 25)]
CORE = {"type": "stacked", "hidden_channels": 4, "layers": 2, "input_kernel": 9, "hidden_kernel": 3}


def contrast_images(n: int, seed: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """White noise under a smooth random contrast envelope, with a random overall contrast and offset per
    image: local contrast varies from place to place and image to image, as in natural images."""
    g = torch.Generator().manual_seed(seed)
    envelope = _gaussian_blur(torch.randn(n, 1, height, width, generator=g), 3.0)
    envelope = torch.exp(envelope / envelope.std())
    scale = torch.exp(0.5 * torch.randn(n, 1, 1, 1, generator=g))
    return 0.3 * torch.randn(n, 1, 1, 1, generator=g) + scale * envelope * torch.randn(n, 1, height, width, generator=g)


def window_neurons(images: torch.Tensor, corners, seed: int, rate: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson counts driven by the contrast energy (squared deviation from the image's mean) summed over
    a WINDOW x WINDOW square at each corner; and the squares' centres (x, y)."""
    g = torch.Generator().manual_seed(seed)
    energy = (images - images.mean(dim=(1, 2, 3), keepdim=True))[:, 0] ** 2
    drive = torch.stack([energy[:, y : y + WINDOW, x : x + WINDOW].sum((1, 2)) for x, y in corners], 1)
    counts = torch.poisson(rate * drive / drive.mean(0), generator=g)
    centres = torch.tensor([[x + (WINDOW - 1) / 2, y + (WINDOW - 1) / 2] for x, y in corners])
    return counts, centres


# --- the estimator -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_driven_neurons_are_found_within_2_px(seed):
    # with 1000 images the errors are about 0.6 px rms, unbiased; about 1 in 300 exceeds 2 px (seeds 0-39)
    images = contrast_images(1000, seed)
    responses, truth = window_neurons(images, CORNERS, seed + 10)
    estimate = rf_estimate(images, responses)
    error = (estimate.centres - truth).norm(dim=1)
    assert estimate.reliable.all()
    assert error.max() < 2.0 and error.mean() < 1.0, error
    assert estimate.centres.shape == (len(CORNERS), 2) and estimate.maps.shape == (len(CORNERS), HEIGHT, WIDTH)
    torch.testing.assert_close(rf_centres(images, responses), estimate.centres)  # the plain entry point


def test_neurons_without_a_receptive_field_get_the_image_centre():
    images = contrast_images(1000, 3)
    driven, truth = window_neurons(images, CORNERS[:2], 4)
    g = torch.Generator().manual_seed(5)
    noise = torch.poisson(torch.full((1000, 20), 3.0), generator=g)  # no relation to the images
    constant = torch.full((1000, 1), 0.1)  # no variance at all (but rounding's)
    estimate = rf_estimate(images, torch.cat([driven, noise, constant], 1))
    # a permutation test at p < 0.05: about 1 noise neuron in 20 passes by chance
    assert estimate.reliable[:2].all() and estimate.reliable[2:22].sum() <= 3 and not estimate.reliable[22]
    centre = torch.tensor([(WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    unreliable = ~estimate.reliable
    torch.testing.assert_close(estimate.centres[unreliable], centre.expand(int(unreliable.sum()), 2))
    assert (estimate.centres[:2] - truth).norm(dim=1).max() < 2.0
    # too few images to correlate anything: all at the centre, no error
    few = rf_estimate(images[:2], driven[:2])
    assert not few.reliable.any() and torch.equal(few.centres, centre.expand(2, 2))


def test_estimate_is_deterministic_and_takes_colour():
    images = contrast_images(1000, 6).expand(-1, 3, -1, -1) * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1)
    responses, truth = window_neurons(images[:, :1], CORNERS[4:], 7)
    a, b = rf_estimate(images, responses), rf_estimate(images, responses)
    assert torch.equal(a.centres, b.centres) and torch.equal(a.reliable, b.reliable)
    assert (a.centres - truth).norm(dim=1).max() < 2.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="images must be"):
        rf_estimate(torch.zeros(10, 8, 8), torch.zeros(10, 2))
    with pytest.raises(ValueError, match="responses must be"):
        rf_estimate(torch.zeros(10, 1, 8, 8), torch.zeros(9, 2))


# --- input pixels -> the readout's grid ------------------------------------------------------------


def test_pixels_to_grid_accounts_for_the_cores_crop():
    # 40 px through an unpadded 9x9 convolution: 32 cells, cell j centred on pixel j + 4
    grid = pixels_to_grid([[4, 4], [35, 35], [19.5, 19.5], [4, 35], [0, 50]], (40, 40), (32, 32))
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-1.0, 1.0], [-4 / 31 * 2 - 1, 46 / 31 * 2 - 1]])
    torch.testing.assert_close(grid, expected)
    # not square: x runs along the width, y along the height
    torch.testing.assert_close(pixels_to_grid([[4, 17.5], [39, 4]], (36, 44), (28, 36)), torch.tensor([[-1.0, 0.0], [1.0, -1.0]]))
    # a one-cell grid is its centre
    torch.testing.assert_close(pixels_to_grid([[3.0, 7.0]], (9, 9), (1, 1)), torch.zeros(1, 2))


@pytest.mark.parametrize(("input_hw", "feature_hw"), [((40, 40), (32, 32)), ((30, 30), (26, 26)), ((64, 64), (8, 8))])
def test_pixels_to_grid_agrees_with_the_twins_geometry(input_hw, feature_hw):
    """The twin maps true RF centres onto the feature grid (readout figures): the same rule, in cell indices."""
    from encoders.twin.geometry import TwinGeometry

    xy = torch.tensor([[0.0, 0.0], [5.5, 30.0], [20.0, 11.0]])
    transform = ImageTransform(grayscale=True, crop=(0, 0, 0, 0), resize=None)
    cells = TwinGeometry(transform, (1, *input_hw), input_hw[0]).rf_centres_on_grid(xy, feature_hw)
    h, w = feature_hw
    torch.testing.assert_close(pixels_to_grid(xy, input_hw, feature_hw), cells / torch.tensor([w - 1, h - 1]) * 2 - 1)


def _sessions(centres: list[list[float]] | None) -> dict:
    info = {"neuron_ids": [f"n{i}" for i in range(4)], "mean_response": [1.0, 2.0, 3.0, 4.0], "n_train": 100}
    if centres is not None:
        info["rf_centre"] = centres
    return {"s": info}


def _encoder(readout: dict, centres, input_shape=(1, 40, 40), seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    transform = ImageTransform(grayscale=True, crop=(0, 0, 0, 0), resize=None).state()
    return Encoder(CORE, readout, _sessions(centres), list(input_shape), transform)


def test_encoder_puts_mu_at_the_data_centres_on_the_cropped_grid():
    # input 40 -> features 32 (9x9 unpadded, then 3x3 padded): pixel p is cell p - 4
    centres = [[4.0, 4.0], [35.0, 19.5], [19.5, 12.0], [-3.0, 60.0]]
    encoder = _encoder({"type": "gaussian", "init_mu": "data"}, centres)
    readout = encoder.readouts["s"]
    assert readout.in_shape[1:] == (32, 32)
    expected = torch.tensor([[-1.0, -1.0], [1.0, 0.0], [0.0, 8 / 31 * 2 - 1], [-1.0, 1.0]])  # the last one clipped
    torch.testing.assert_close(readout.mu.detach(), expected)
    torch.testing.assert_close(readout.locations(), torch.tensor([[0.0, 0.0], [31.0, 15.5], [15.5, 8.0], [0.0, 31.0]]))


def test_a_neuron_started_at_a_centre_reads_the_image_there():
    """End to end: in eval mode, neuron n's gradient with respect to the image is centred on its RF centre
    (the support of one feature cell is symmetric about the pixel it is centred on)."""
    centres = [[10.0, 25.0], [30.0, 6.0], [21.0, 21.0], [5.0, 34.0]]  # on cell centres: mu reads one cell
    encoder = _encoder({"type": "gaussian", "init_mu": "data"}, centres, input_shape=(1, 40, 44)).eval()
    for n, (x, y) in enumerate(centres):
        image = torch.randn(1, 1, 40, 44, requires_grad=True)
        encoder(image, "s")[0, n].backward()
        grad = image.grad[0, 0].abs()
        rows, cols = torch.nonzero(grad > 1e-4 * grad.max()).unbind(1)  # not the ~1e-7 of a rounded mu
        assert ((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2) == (x, y)


def test_random_init_is_unchanged_and_data_changes_mu_only():
    # "random" draws exactly what it always drew (uniform in ±init_mu_range, first thing after the checks)
    torch.manual_seed(3)
    drawn = torch.empty(4, 2).uniform_(-0.3, 0.3)
    torch.manual_seed(3)
    plain = GaussianReadout((8, 6, 7), 4)
    torch.testing.assert_close(plain.mu.detach(), drawn, rtol=0, atol=0)
    # centres given but not asked for: nothing changes, in the readout or the whole encoder
    torch.manual_seed(3)
    ignoring = GaussianReadout((8, 6, 7), 4, init_mu="random", rf_centres=torch.zeros(4, 2))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ignoring.state_dict().values()))
    centres = [[10.0, 11.0], [20.0, 21.0], [30.0, 5.0], [7.0, 33.0]]
    without, with_centres = _encoder({"type": "gaussian"}, None), _encoder({"type": "gaussian"}, centres)
    for (name, a), b in zip(without.state_dict().items(), with_centres.state_dict().values()):
        assert torch.equal(a, b), name
    # "data": the same random stream, so only mu differs (sigma, features, bias, the core are the same)
    data = _encoder({"type": "gaussian", "init_mu": "data"}, centres)
    differ = [name for (name, a), b in zip(without.state_dict().items(), data.state_dict().values()) if not torch.equal(a, b)]
    assert differ == ["readouts.s.mu"]


def test_data_init_without_centres_is_a_one_line_error_naming_the_option():
    with pytest.raises(ConfigError, match="init_mu 'data' needs receptive-field centres") as error:
        _encoder({"type": "gaussian", "init_mu": "data"}, None)
    assert "\n" not in str(error.value) and str(error.value).startswith("readout: ")
    with pytest.raises(ConfigError, match="init_mu must be one of"):
        _encoder({"type": "gaussian", "init_mu": "centre"}, None)
    with pytest.raises(ConfigError, match="set from the data"):  # not a config option
        _encoder({"type": "gaussian", "rf_centres": [[0.0, 0.0]] * 4}, [[1.0, 1.0]] * 4)
    with pytest.raises(ValueError, match="rf_centres must be 4 finite"):
        GaussianReadout((8, 6, 7), 4, init_mu="data", rf_centres=torch.zeros(3, 2))


def test_readouts_without_the_argument_still_build_from_sessions_with_centres():
    encoder = _encoder({"type": "attention", "embed_dim": 4, "heads": 1}, [[1.0, 2.0]] * 4)
    assert encoder(torch.randn(2, 1, 40, 40), "s").shape == (2, 4)


# --- the data module and checkpoints -------------------------------------------------------------


def _contrast_session(session_id: str, corners, seed: int):
    from encoders.datasets.schema import SessionData

    n = 1100
    images = contrast_images(n, seed)
    responses, truth = window_neurons(images, corners, seed + 1)
    tiers = np.array(["train"] * n, dtype=object)
    tiers[:50], tiers[50:100] = "test", "validation"
    tiers = tiers.astype(str)
    return SessionData(
        session_id=session_id, images=images[:, 0].numpy().astype(np.float32), image_ids=np.arange(n, dtype=np.int64),
        responses=responses.numpy().astype(np.float32), tiers=tiers,
        neuron_ids=np.array([f"{session_id}-{i}" for i in range(len(corners))]),
        attrs={"units": "spikes per bin", "spike_counts": 1},
    ), truth


def test_session_info_has_plain_centres_in_memory_and_none_lazily(tmp_path):
    a, truth_a = _contrast_session("a", CORNERS[:4], 0)
    b, truth_b = _contrast_session("b", CORNERS[4:7], 1)
    path = tmp_path / "contrast.h5"
    write_dataset(path, [a, b])
    dm = RecordedDataModule(str(path), in_memory=True)
    dm.setup("fit")
    info = dm.session_info()
    assert json.loads(json.dumps(info)) == info  # plain JSON: it goes into checkpoints
    for session, truth in (("a", truth_a), ("b", truth_b)):
        centres = info[session]["rf_centre"]
        assert len(centres) == len(truth) and all(isinstance(v, float) for xy in centres for v in xy)
        assert (torch.tensor(centres) - truth).norm(dim=1).max() < 2.0  # through the stored file and the z-score
    assert dm.session_info() == info  # estimated once, the same every time
    lazy = RecordedDataModule(str(path), in_memory=False)
    lazy.setup("fit")
    assert all("rf_centre" not in v for v in lazy.session_info().values())
    # an Encoder built from this info starts each neuron at its centre
    torch.manual_seed(0)
    encoder = Encoder(CORE, {"type": "gaussian", "init_mu": "data"}, info, list(dm.input_shape()), dm.transform.state())
    expected = pixels_to_grid(torch.tensor(info["a"]["rf_centre"]), (HEIGHT, WIDTH), encoder.readouts["a"].in_shape[1:])
    torch.testing.assert_close(encoder.readouts["a"].mu.detach(), expected.clamp(-1, 1))


def test_a_checkpoint_without_centres_loads_as_it_was():
    model = load_encoder(LEGACY / "gaussian.ckpt")
    assert all("rf_centre" not in info for info in model.spec()["sessions"].values())
    rebuilt = Encoder(**model.spec())
    rebuilt.load_state_dict(model.state_dict())
    images = torch.randn(3, *model.input_shape)
    with torch.no_grad():
        for session in model.sessions:
            assert torch.equal(rebuilt.eval()(images, session), model.eval()(images, session))


def test_twin_centres_correlate_with_the_truth(tmp_path):
    """On a small generated twin the estimates carry the true centres (their errors are reported, not bounded:
    the twin's centres all lie within the middle third of the image, a few pixels apart)."""
    from encoders.twin import write_twin
    from encoders.twin.geometry import TwinGeometry

    path = tmp_path / "twin.h5"
    write_twin(path, n_sessions=2, neurons_per_session=30, images_per_session=1000, image_size=32, seed=0)
    dm = RecordedDataModule(str(path))
    dm.setup("fit")
    geometry = TwinGeometry(dm.transform, dm.input_shape(), dm.twin.image_size)
    info = dm.session_info()
    estimated = torch.cat([torch.tensor(info[s]["rf_centre"]) for s in dm.sessions])
    truth = torch.cat([geometry.to_model_pixels(dm.twin.rf_xy(s)) for s in dm.sessions])
    for axis in (0, 1):
        assert torch.corrcoef(torch.stack([estimated[:, axis], truth[:, axis]]))[0, 1] > 0.3
