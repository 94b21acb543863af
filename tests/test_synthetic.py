"""The synthetic V4 twin: natural-image pool, ground-truth neurons and the generated sessions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.datasets.natural_images import natural_image_pool, source_image_names
from encoders.datasets.schema import TIERS
from encoders.twin import make_twin
from encoders.twin.neurons import SELECTIVITY_TYPES, GroundTruthV4, ground_truth_response

SIZE = 32
N_SESSIONS, NEURONS, IMAGES, REPEATS = 2, 12, 200, 10


@pytest.fixture(scope="module")
def twin():
    return make_twin(N_SESSIONS, NEURONS, IMAGES, SIZE, seed=7, validation_fraction=0.15,
                     test_fraction=0.2, test_repeats=REPEATS)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    """Natural images the twin was not calibrated or recorded on."""
    return torch.as_tensor(natural_image_pool(300, SIZE, seed=999), dtype=torch.float32)[:, None]


@pytest.fixture(scope="module")
def probe_rates(twin, probe) -> np.ndarray:
    with torch.no_grad():
        return twin[1](probe).numpy()


def _column_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return (a * b).mean(0)


# ------------------------------------------------------------------------- natural images
def test_natural_image_pool_is_deterministic_varied_grayscale():
    a = natural_image_pool(40, 24, seed=3)
    assert a.shape == (40, 24, 24) and a.dtype == np.uint8
    assert np.array_equal(a, natural_image_pool(40, 24, seed=3))
    assert not np.array_equal(a, natural_image_pool(40, 24, seed=4))
    assert a.std() > 20  # real photographs, not blank
    assert len({im.tobytes() for im in a}) == 40  # distinct crops
    names = source_image_names()
    assert len(names) == 13 and any("china" in n for n in names)
    with pytest.raises(ValueError):
        natural_image_pool(-1, 24, seed=0)


# --------------------------------------------------------------------------- ground truth
def test_same_seed_same_twin_different_seed_different_twin():
    def small(seed: int):
        return make_twin(2, 3, 30, 16, seed=seed, validation_fraction=0.2, test_fraction=0.2,
                         test_repeats=3)

    (sessions, model), (again, model_again) = small(7), small(7)
    for s, t in zip(sessions, again):
        assert np.array_equal(s.images, t.images)
        assert np.array_equal(s.tiers, t.tiers)
        np.testing.assert_array_equal(s.trials, t.trials)  # NaNs in the same places
    for name, value in model.state_arrays().items():
        np.testing.assert_array_equal(value, model_again.state_arrays()[name], err_msg=name)
    other = GroundTruthV4.generate(6, 16, seed=8, n_calibration_images=32)
    assert not np.array_equal(other.rf_x.numpy(), model.rf_x.numpy())


def test_state_arrays_round_trip_gives_identical_outputs(twin, probe):
    model = twin[1]
    arrays = model.state_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "fi" for v in arrays.values())
    rebuilt = GroundTruthV4.from_arrays({k: v.copy() for k, v in arrays.items()})
    assert rebuilt.n_neurons == model.n_neurons == N_SESSIONS * NEURONS
    with torch.no_grad():
        assert torch.equal(rebuilt(probe), model(probe))
    with pytest.raises(ValueError):
        GroundTruthV4.from_arrays({k: v for k, v in arrays.items() if k != "mix"})


def test_rates_are_non_negative_finite_and_v4_like(probe_rates):
    assert np.isfinite(probe_rates).all() and (probe_rates >= 0).all()
    mean = probe_rates.mean(0)
    assert 2.5 < np.median(mean) < 6.0
    assert mean.min() > 1.0 and mean.max() < 12.0
    # Selective: every neuron's rate varies substantially across natural images.
    assert (probe_rates.std(0) / mean).min() > 0.3


def test_gradient_with_respect_to_images_is_finite_and_nonzero(twin, probe):
    model = twin[1]
    images = probe[:4].clone().requires_grad_(True)
    model(images)[:, :5].sum().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    # Gradients reach the receptive field, not only a few pixels.
    assert (images.grad.abs().sum(0)[0] > 0).float().mean() > 0.3


def test_forward_rejects_wrong_image_size(twin):
    with pytest.raises(ValueError):
        twin[1](torch.zeros(2, 1, SIZE + 4, SIZE + 4))
    with pytest.raises(ValueError):
        GroundTruthV4.generate(4, 30, seed=0)  # not a multiple of the grid stride


def test_responses_tolerate_small_shifts(twin, probe, probe_rates):
    model = twin[1]
    with torch.no_grad():
        shift2 = model(torch.roll(probe, shifts=(2, -2), dims=(2, 3))).numpy()
        shift4 = model(torch.roll(probe, shifts=4, dims=3)).numpy()
    assert np.mean(_column_corr(probe_rates, shift2)) > 0.75
    assert np.mean(_column_corr(probe_rates, shift4)) > 0.55


def test_neuron_maps_are_what_each_neuron_pools(twin, probe):
    """neuron_maps(image b, column b) is the RF-weighted map neuron b pools into its rate."""
    model = twin[1]
    images, columns = probe[:40], torch.arange(40) % model.n_neurons
    with torch.no_grad():
        maps = model.neuron_maps(images, columns)
        every = model.mixed_maps(model.feature_maps(model.feature_drive(model.channels(images))), model.mix)
        expected = every[columns, :, torch.arange(40)] * model.rf_envelope()[columns]
    assert maps.shape == (40, model.grid ** 2) and (maps >= 0).all()
    torch.testing.assert_close(maps, expected)
    # every neuron finds something of its own in every natural image
    assert (maps.sum(1) > 0).all()


def test_rates_are_the_output_nonlinearity_of_the_drive(twin, probe, probe_rates):
    truth = twin[1]
    with torch.no_grad():
        drive = truth.drive(probe)
        rates = truth.rates(drive * truth.drive_std + truth.drive_mean)
    np.testing.assert_allclose(rates.numpy(), probe_rates, rtol=1e-5, atol=1e-5)
    assert abs(drive.mean().item()) < 0.5  # z-scored over natural images


def test_twin_is_not_a_linear_filter(twin, probe, probe_rates):
    model = twin[1]
    with torch.no_grad():
        inverted = model(255.0 - probe).numpy()
        # Superposition of contrasts about the grey level the twin treats as zero.
        a, b = probe[:150], probe[150:]
        both = model(torch.clamp(a + b - 128.0, 0, 255)).numpy()
        grey = model(torch.full_like(a[:1], 128.0)).numpy()
    # Complex-cell energies ignore contrast polarity, polarity-edge neurons do not.
    change = np.abs(inverted - probe_rates).mean(0) / probe_rates.mean(0)
    polarity = model.selectivity == "polarity_edge"
    assert polarity.any() and change[polarity].mean() > 0.3
    assert np.mean(_column_corr(probe_rates, inverted)[polarity]) < 0.6
    linear_prediction = probe_rates[:150] + probe_rates[150:] - grey
    error = np.abs(both - linear_prediction).mean() / probe_rates.mean()
    assert error > 0.3


# ---------------------------------------------------------------------------- sessions
def test_sessions_follow_the_schema(twin):
    sessions, model = twin
    assert [s.session_id for s in sessions] == ["twin0", "twin1"]
    for s in sessions:
        assert s.images.shape == (IMAGES, SIZE, SIZE) and s.images.dtype == np.uint8
        assert s.image_ids.dtype == np.int64 and len(np.unique(s.image_ids)) == IMAGES
        assert s.responses.shape == (IMAGES, NEURONS) and s.responses.dtype == np.float32
        assert s.neuron_ids[0] == f"{s.session_id}-n000" and len(set(s.neuron_ids)) == NEURONS
        assert s.attrs["units"] == "spikes per bin (Poisson)" and s.attrs["spike_counts"] == 1
        assert s.attrs["animal"] == "synthetic" and "seed=7" in s.attrs["provenance"]
        for key in ("ground_truth_index", "rf_x", "rf_y", "rf_size", "preferred_orientation",
                    "selectivity"):
            assert s.neuron_meta[key].shape == (NEURONS,)
        assert set(s.neuron_meta["selectivity"]) <= set(SELECTIVITY_TYPES)
        assert (s.neuron_meta["rf_x"] > 0).all() and (s.neuron_meta["rf_x"] < SIZE).all()
    # Sessions see different images.
    first = {im.tobytes() for im in sessions[0].images}
    assert not first & {im.tobytes() for im in sessions[1].images}


def test_tiers_have_the_requested_fractions(twin):
    for s in twin[0]:
        counts = {t: int((s.tiers == t).sum()) for t in TIERS}
        assert counts == {"train": 130, "validation": 30, "test": 40}
    assert not np.array_equal(twin[0][0].tiers, twin[0][1].tiers)


@pytest.mark.parametrize("validation, test, images", [
    (0.5, 0.5, 100), (0.0, 0.1, 100), (0.1, 1.0, 100), (0.1, 0.1, 4),
])
def test_bad_fractions_are_rejected(validation, test, images):
    with pytest.raises(ValueError):
        make_twin(1, 2, images, 16, seed=0, validation_fraction=validation, test_fraction=test)


def test_trials_hold_repeats_and_responses_are_their_mean(twin):
    for s in twin[0]:
        assert s.trials.shape == (IMAGES, REPEATS, NEURONS) and s.trials.dtype == np.float32
        test = s.tiers == "test"
        assert np.isfinite(s.trials[test]).all()
        assert np.isfinite(s.trials[~test, 0]).all() and np.isnan(s.trials[~test, 1:]).all()
        counts = s.trials[np.isfinite(s.trials)]
        assert (counts >= 0).all() and np.array_equal(counts, np.round(counts))
        np.testing.assert_allclose(s.responses, np.nanmean(s.trials, axis=1), rtol=1e-6)


def test_ground_truth_index_maps_sessions_to_their_true_rates(twin):
    sessions, model = twin
    for k, s in enumerate(sessions):
        index = s.neuron_meta["ground_truth_index"]
        assert index.dtype == np.int64
        np.testing.assert_array_equal(index, np.arange(k * NEURONS, (k + 1) * NEURONS))
        with torch.no_grad():
            rate = ground_truth_response(model, s.images, index).numpy()
            everything = ground_truth_response(model, torch.as_tensor(s.images)[:, None])
        np.testing.assert_array_equal(rate, everything[:, index].numpy())
        test = s.tiers == "test"
        trial_mean = s.trials[test].mean(axis=1)
        # Poisson: the mean of 10 repeats sits close to the true rate ...
        z = (trial_mean - rate[test]) / np.sqrt((rate[test] + 1e-3) / REPEATS)
        assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2
        assert np.mean(_column_corr(trial_mean, rate[test])) > 0.85
        # ... and matches other neurons' rates much worse.
        shuffled = np.roll(rate[test], 1, axis=1)
        assert np.mean(_column_corr(trial_mean, shuffled)) < 0.6
        single = s.responses[~test]
        assert np.mean(_column_corr(single, rate[~test])) > 0.6
        assert rate.mean() == pytest.approx(single.mean(), rel=0.1)

