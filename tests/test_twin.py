"""encoders.twin: the Twin resolved from a data file, the model <-> twin geometry, and scoring on the true neurons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from conftest import make_session
from encoders.datasets.io import write_dataset
from encoders.datasets.transforms import ImageTransform
from encoders.errors import DatasetError, EncodersError
from encoders.twin import Twin, TwinGeometry, write_twin

SIZE = 16
SESSIONS, NEURONS = ["twin0", "twin1"], 4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin") / "twin.h5"
    write_twin(out, n_sessions=2, neurons_per_session=NEURONS, images_per_session=60, image_size=SIZE, seed=0,
               validation_fraction=0.2, test_fraction=0.2, test_repeats=3)
    return out


@pytest.fixture(scope="module")
def twin(path) -> Twin:
    return Twin.from_file(path)


class FakeModel(nn.Module):
    """What the twin needs of a model (sessions, neuron ids, image transform, input shape) and one parameter."""

    def __init__(self, transform: ImageTransform, ids: dict[str, list[str]] | None = None):
        super().__init__()
        self.ids = ids or {s: [f"{s}-n{i:03d}" for i in range(NEURONS)] for s in SESSIONS}
        self.sessions = list(self.ids)
        self.image_transform = transform
        self.input_shape = transform.output_shape((SIZE, SIZE))
        self.weight = nn.Parameter(torch.zeros(()))

    def neuron_ids(self, session: str) -> list[str]:
        return self.ids[session]


def _centroid(image: torch.Tensor) -> torch.Tensor:
    """(x, y) centre of mass of a non-negative (H, W) image, in pixel indices."""
    rows, cols = torch.meshgrid(torch.arange(image.shape[0], dtype=torch.float32),
                                torch.arange(image.shape[1], dtype=torch.float32), indexing="ij")
    return torch.stack([(image * cols).sum(), (image * rows).sum()]) / image.sum()


def _blob(xy: torch.Tensor, shape: tuple[int, int], sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blobs (N, h, w) centred at (x, y) rows of `xy`."""
    rows, cols = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32),
                                torch.arange(shape[1], dtype=torch.float32), indexing="ij")
    x, y = xy[:, 0, None, None], xy[:, 1, None, None]
    return torch.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))


# ------------------------------------------------------------------------------------ Twin
def test_a_file_without_ground_truth_is_no_twin(tmp_path):
    real = tmp_path / "real.h5"
    write_dataset(real, [make_session()])
    assert Twin.from_file(real) is None
    with pytest.raises(DatasetError, match="file not found"):
        Twin.from_file(tmp_path / "missing.h5")


def test_the_twin_of_a_file(twin, path):
    assert twin.path == path and twin.sessions == SESSIONS and twin.image_size == SIZE
    assert twin.truth.n_neurons == 2 * NEURONS and not twin.truth.training
    torch.testing.assert_close(twin.session_columns("twin1"), torch.arange(NEURONS, 2 * NEURONS))
    xy = twin.rf_xy("twin1")
    assert xy.shape == (NEURONS, 2)
    torch.testing.assert_close(xy[:, 0], twin.truth.rf_x[NEURONS:].float())


def test_columns_and_checks(twin, path):
    model = FakeModel(ImageTransform())
    twin.check(model)
    columns = twin.columns(model, [("twin1", "twin1-n002"), ("twin0", "twin0-n000"), ("twin1", "twin1-n000")])
    assert columns.tolist() == [NEURONS + 2, 0, NEURONS]
    renamed = FakeModel(ImageTransform(), {"twin0": [f"x{i}" for i in range(NEURONS)]})
    with pytest.raises(EncodersError) as error:
        twin.check(renamed)
    assert str(path) in str(error.value) and "'twin0'" in str(error.value) and "\n" not in str(error.value)
    missing = FakeModel(ImageTransform(), {"twin7": ["a"]})
    with pytest.raises(EncodersError, match=r"session 'twin7' of the model is not in the data file"):
        twin.columns(missing, [("twin7", "a")])
    with pytest.raises(EncodersError, match="unknown neuron id"):
        twin.columns(model, [("twin0", "twin0-n999")])


# -------------------------------------------------------------------------------- geometry
def test_a_cropped_and_resized_model_image_lands_where_the_model_saw_it():
    # stored 16 px, crop 2 px on every side (a 12 x 12 window at rows/cols 2..13), resized to 8 x 8
    transform = ImageTransform(crop=(2, 2, 2, 2), resize=(8, 8), mean=100.0, std=50.0)
    geometry = TwinGeometry(transform, (1, 8, 8), SIZE)
    spot = torch.zeros(1, 1, 8, 8)
    spot[0, 0, 3, 5] = 2.0  # model input (x=5, y=3), 100 pixel units above the mean
    twin_pixels = geometry.to_twin(spot)[0, 0]
    assert twin_pixels.shape == (SIZE, SIZE)
    border = torch.ones(SIZE, SIZE, dtype=torch.bool)
    border[2:14, 2:14] = False
    assert (twin_pixels[border] == 100.0).all()  # the data's mean pixel: what 0 means in model space
    above = twin_pixels - 100.0
    assert above[2:14, 2:14].sum() > 0 and (above[border] == 0).all()
    # model pixel (5, 3) is stored pixel 2 + (5 + 0.5) * 12 / 8 - 0.5 = 9.75, 2 + 3.5 * 1.5 - 0.5 = 6.75
    torch.testing.assert_close(_centroid(above), torch.tensor([9.75, 6.75]), atol=0.05, rtol=0)
    row, col = divmod(int(above.argmax()), SIZE)
    assert (row, col) in {(6, 9), (6, 10), (7, 9), (7, 10)}
    # stretching the model's 8 x 8 over the whole 16 x 16 frame would put it at (10.5, 6.5)
    torch.testing.assert_close(geometry.to_model_pixels(torch.tensor([[9.75, 6.75]])), torch.tensor([[5.0, 3.0]]))


def test_the_stored_window_comes_back_from_the_model_input():
    """Stored image -> the model's transform -> to_twin: the window again (up to the resize), mean elsewhere."""
    transform = ImageTransform(crop=(2, 2, 2, 2), mean=80.0, std=40.0)  # no resize: exact
    stored = torch.rand(3, 1, SIZE, SIZE) * 255
    geometry = TwinGeometry(transform, transform.output_shape((SIZE, SIZE)), SIZE)
    back = geometry.to_twin(transform(stored))
    torch.testing.assert_close(back[..., 2:14, 2:14], stored[..., 2:14, 2:14])
    assert (back[..., :2, :] == 80.0).all() and (back[..., :, 14:] == 80.0).all()
    # differentiable: a gradient reaches every model-space pixel
    images = transform(stored).requires_grad_(True)
    geometry.to_twin(images).sum().backward()
    assert (images.grad == transform.std).all()


def test_rf_centres_map_consistently_with_to_twin():
    transform = ImageTransform(crop=(3, 1, 2, 2), resize=(10, 8), mean=120.0, std=30.0)
    geometry = TwinGeometry(transform, (1, 10, 8), SIZE)
    stored = torch.tensor([[7.0, 8.0], [6.5, 7.25], [9.0, 6.0]])
    model_xy = geometry.to_model_pixels(stored)
    blobs = _blob(model_xy, (10, 8))[:, None]  # model space, centred where the stored points map to
    placed = geometry.to_twin(blobs)[:, 0] - 120.0
    back = torch.stack([_centroid(p) for p in placed])
    torch.testing.assert_close(back, stored, atol=0.05, rtol=0)
    # a grid as large as the input is the input itself; a stride-1 core's grid trims the border evenly
    torch.testing.assert_close(geometry.rf_centres_on_grid(stored, (10, 8)), model_xy)
    torch.testing.assert_close(geometry.rf_centres_on_grid(stored, (6, 6)), model_xy - torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("crop, resize, grid", [
    ((0, 0, 0, 0), None, (12, 12)),  # the quickstart: stride-1 core, valid convolutions
    ((2, 2, 2, 2), (10, 10), (6, 6)),  # crop and downsample, then a stride-1 core
    ((0, 0, 0, 0), (20, 20), (5, 5)),  # a strided core that scales its input by 1/4
])
def test_true_rf_centres_follow_crop_resize_and_the_core_grid(twin, crop, resize, grid):
    """(Moved from test_synthetic.py, at the tiny twin's 16 px.)"""
    transform = ImageTransform(crop=crop, resize=resize)
    model = FakeModel(transform)
    session = "twin1"
    centres = twin.rf_centres(model, grid)[session]
    columns = twin.session_columns(session)
    assert centres.shape == (NEURONS, 2)
    # a small blob at each true centre, carried through the real transform: its centroid is the answer
    truth = twin.truth
    x0, y0 = truth.rf_x[columns].float(), truth.rf_y[columns].float()
    moved = transform.geometry(_blob(torch.stack([x0, y0], 1), (SIZE, SIZE)))[:, 0]
    h_in, w_in = moved.shape[-2:]
    cx, cy = torch.stack([_centroid(m) for m in moved]).unbind(1)
    if grid[1] * 2 > w_in:
        expected = torch.stack([cx - (w_in - grid[1]) / 2, cy - (h_in - grid[0]) / 2], dim=1)
    else:
        expected = torch.stack([(cx + 0.5) * grid[1] / w_in - 0.5, (cy + 0.5) * grid[0] / h_in - 0.5], dim=1)
    torch.testing.assert_close(centres, expected, atol=0.1, rtol=0)


# --------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("resize", [None, (12, 12)])
def test_uncropped_scores_are_the_true_neurons_on_the_pixels(twin, resize):
    """Without a crop the twin sees to_pixels of the image, resized back to the stored size: as before."""
    from encoders.twin.scoring import GroundTruthActivation, true_rates

    transform = ImageTransform(resize=resize, mean=110.0, std=45.0)
    model = FakeModel(transform)
    geometry = twin.geometry(model)
    shape = tuple(model.input_shape)
    images = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    pixels = transform.to_pixels(images)
    stored = pixels if resize is None else F.interpolate(pixels, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    with torch.no_grad():
        direct = twin.truth(stored)
        columns = torch.tensor([5, 0, 7, 2, 2])
        energy = GroundTruthActivation(twin.truth, columns, geometry)
        torch.testing.assert_close(energy.activation(images), direct[torch.arange(5), columns], rtol=0, atol=0)
        torch.testing.assert_close(energy(images), -direct[torch.arange(5), columns], rtol=0, atol=0)
        torch.testing.assert_close(true_rates(twin.truth, geometry, pixels), direct, rtol=0, atol=0)


def test_mei_scores_on_the_truth_without_a_crop(twin):
    from encoders.synthesis.gradient_ascent import GASettings
    from encoders.twin.scoring import ground_truth_summary, score_on_ground_truth

    transform = ImageTransform(mean=110.0, std=45.0)
    model = FakeModel(transform)
    targets = [("twin1", "twin1-n001"), ("twin0", "twin0-n003")]
    seeds = [0, 1]
    images = torch.randn(1, 2, 2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    results = xr.Dataset(
        {"image": (("method", "neuron", "seed", "channel", "y", "x"), images.numpy()),
         "image_pixels": (("method", "neuron", "seed", "channel", "y", "x"), transform.to_pixels(images).numpy())},
        coords={"method": ["ga"], "session": ("neuron", [t[0] for t in targets]),
                "neuron_id": ("neuron", [t[1] for t in targets]), "seed": seeds},
        attrs={"minimize": 0},
    )
    scored = score_on_ground_truth(results, model, twin, GASettings(seeds=tuple(seeds), steps=3, batch_size=4))
    with torch.no_grad():
        rates = twin.truth(transform.to_pixels(images[0].flatten(0, 1))).view(2, 2, -1)
        true_mei_rates = twin.truth(transform.to_pixels(torch.as_tensor(scored.true_mei.values)))
    columns = [NEURONS + 1, 3]
    expected = torch.stack([rates[i, :, c] for i, c in enumerate(columns)])
    np.testing.assert_allclose(scored.ground_truth_activation.values[0], expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(scored.true_mei_activation.values, true_mei_rates[[0, 1], columns].numpy(), rtol=1e-5)
    np.testing.assert_allclose(scored.ground_truth_relative_activation.values[0],
                               expected.numpy() / scored.true_mei_activation.values[:, None], rtol=1e-5)
    assert scored.attrs["ground_truth"] == str(twin.path)
    assert "on the twin's true neurons" in ground_truth_summary(scored)


def test_true_meis_are_searched_once_and_kept(twin, tmp_path):
    """A twin's true MEIs are kept in the store for (twin, geometry, targets, seeds, settings): a second scoring
    (another checkpoint, or an EGG product with the same yardstick) reads them back, with identical scores."""
    from encoders.synthesis.gradient_ascent import GASettings
    from encoders.twin.scoring import score_on_ground_truth, true_meis

    model = FakeModel(ImageTransform(mean=110.0, std=45.0))
    targets, seeds = [("twin1", "twin1-n001"), ("twin0", "twin0-n003")], [0, 1]
    settings = GASettings(seeds=tuple(seeds), steps=3, batch_size=4)
    images = torch.randn(1, 2, 2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    results = xr.Dataset(
        {"image": (("method", "neuron", "seed", "channel", "y", "x"), images.numpy()),
         "image_pixels": (("method", "neuron", "seed", "channel", "y", "x"), model.image_transform.to_pixels(images).numpy())},
        coords={"method": ["ga"], "session": ("neuron", [t[0] for t in targets]),
                "neuron_id": ("neuron", [t[1] for t in targets]), "seed": seeds},
        attrs={"minimize": 0},
    )
    store = tmp_path / "twin_truth"
    first = score_on_ground_truth(results, model, twin, settings, store)
    [kept] = list(store.glob("true_meis_*.nc"))
    stamp = kept.stat().st_mtime_ns
    again = score_on_ground_truth(results, model, twin, settings, store)
    assert kept.stat().st_mtime_ns == stamp and list(store.glob("*.nc")) == [kept]  # read back, not searched again
    xr.testing.assert_identical(first, again)
    uncached = score_on_ground_truth(results, model, twin, settings)
    np.testing.assert_array_equal(first.true_mei.values, uncached.true_mei.values)  # the store changes no number
    true_meis(model, twin, targets, seeds, settings.replace(steps=4), store=store)  # other settings: another entry
    true_meis(model, twin, targets[:1], seeds, settings, store=store)  # other targets: another entry
    assert len(list(store.glob("true_meis_*.nc"))) == 3


def test_test_correlation_with_the_truth_is_one_for_a_perfect_model(twin, path):
    """ground_truth_correlation compares predictions with the truth on the images the model saw."""
    from encoders.datasets.datamodule import RecordedDataModule
    from encoders.twin.scoring import ground_truth_correlation

    datamodule = RecordedDataModule(str(path), resize=(12, 12))
    datamodule.setup("test")

    class Perfect(FakeModel):
        def forward(self, images, session):  # the truth itself, on the same pixels the twin gets
            pixels = F.interpolate(self.image_transform.to_pixels(images), size=(SIZE, SIZE), mode="bilinear",
                                   align_corners=False)
            return twin.truth(pixels)[:, twin.session_columns(session)]

    model = Perfect(datamodule.transform)
    for session in SESSIONS:
        r = ground_truth_correlation(model, datamodule, session, twin)
        assert r.shape == (NEURONS,)
        torch.testing.assert_close(r, torch.ones(NEURONS), atol=1e-5, rtol=0)
