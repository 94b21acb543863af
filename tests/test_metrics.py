"""Per-neuron metrics: a neuron without variance is NaN with a warning naming it (never 0 or -inf),
the other neurons keep their values and finite gradients, and summaries skip NaN."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from encoders.metrics import (
    NoVarianceWarning,
    correlation,
    correlation_to_average,
    feve,
    neuron_mean,
    oracle_correlation,
    single_trial_correlation,
    summarize,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed: int = 0, n_images: int = 40, repeats: int = 5, n_neurons: int = 4):
    """Poisson trials around image-driven rates (NaN in one repeat slot), and noisy predictions."""
    g = torch.Generator().manual_seed(seed)
    rates = 1 + 4 * torch.rand(n_images, n_neurons, generator=g, dtype=torch.float64)
    trials = torch.poisson(rates[:, None].expand(-1, repeats, -1).contiguous(), generator=g)
    trials[::3, -1] = float("nan")
    predictions = rates + 0.5 * torch.randn(n_images, n_neurons, generator=g, dtype=torch.float64)
    return predictions, trials


def _no_warnings(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function(*args, **kwargs)


def test_correlation_matches_numpy_and_is_silent_when_every_neuron_varies():
    x, trials = _data()
    y = torch.nanmean(trials, 1)
    r = _no_warnings(correlation, x, y)
    expected = [np.corrcoef(x[:, i].numpy(), y[:, i].numpy())[0, 1] for i in range(x.shape[1])]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("constant", ["predictions", "responses"])
def test_correlation_of_a_constant_neuron_is_nan_with_a_warning(constant):
    x, trials = _data()
    y = torch.nanmean(trials, 1).float()
    x = x.float()
    # 0.1 is not exact in binary: x - mean(x) leaves rounding residue, which used to give r = 0.000
    (x if constant == "predictions" else y)[:, 2] = 0.1
    with pytest.warns(NoVarianceWarning, match=r"correlation is NaN for 1 of 4 neuron indices \[2\]") as record:
        r = correlation(x, y)
    assert record[0].message.indices == [2]
    assert torch.isnan(r[2]) and torch.isfinite(r[[0, 1, 3]]).all(), r
    np.testing.assert_allclose(r[[0, 1, 3]].numpy(), correlation(x[:, [0, 1, 3]], y[:, [0, 1, 3]]).numpy(), rtol=1e-5)


def test_correlation_gradients_stay_finite_beside_nan_neurons():
    x, trials = _data()
    x = x.clone().requires_grad_(True)
    y = torch.nanmean(trials, 1)
    y[:, 1] = 0.0  # a silent neuron
    with pytest.warns(NoVarianceWarning):
        r = correlation(x, y)
    r.nansum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[:, 1] == 0).all() and (x.grad[:, [0, 2, 3]] != 0).any(0).all()
    # the same gradient as for the defined neurons alone
    x2 = x.detach()[:, [0, 2, 3]].clone().requires_grad_(True)
    correlation(x2, y[:, [0, 2, 3]]).sum().backward()
    torch.testing.assert_close(x.grad[:, [0, 2, 3]], x2.grad)


def test_correlation_over_neurons_as_an_energy():
    """dim=1, as ResponseDistance uses it: a constant target row is NaN, every other image still gets a finite gradient."""
    g = torch.Generator().manual_seed(1)
    predicted = torch.randn(3, 6, generator=g, requires_grad=True)
    target = torch.randn(3, 6, generator=g)
    target[1] = 2.0
    with pytest.warns(NoVarianceWarning, match=r"positions|neuron indices"):
        energy = 1 - correlation(predicted, target, dim=1)
    assert torch.isnan(energy[1]) and torch.isfinite(energy[[0, 2]]).all()
    (gradient,) = torch.autograd.grad(energy.sum(), predicted)  # NaN energy, as gradient descent sums it
    assert torch.isfinite(gradient).all() and (gradient[1] == 0).all() and (gradient[[0, 2]] != 0).all()


def test_trial_metrics_of_a_silent_neuron_are_nan_not_minus_inf():
    predictions, trials = _data()
    trials[:, :, 3] = torch.where(torch.isnan(trials[:, :, 3]), trials[:, :, 3], torch.zeros(()))  # never fires
    for metric, args in [
        (feve, (predictions, trials)),
        (single_trial_correlation, (predictions, trials)),
        (correlation_to_average, (predictions, trials)),
        (oracle_correlation, (trials,)),
    ]:
        with pytest.warns(NoVarianceWarning, match=rf"{metric.__name__} is NaN for 1 of 4 neuron indices \[3\]"):
            values = metric(*args)
        assert torch.isnan(values[3]) and not torch.isinf(values).any(), (metric.__name__, values)
        assert torch.isfinite(values[:3]).all(), (metric.__name__, values)


def test_feve_matches_its_definition_and_is_1_for_perfect_predictions():
    predictions, trials = _data(seed=2, repeats=8)
    values = _no_warnings(feve, predictions, trials)
    t = trials[:, :, 0].numpy()
    valid = ~np.isnan(t)
    noise = np.nanvar(t, axis=1, ddof=1).mean()
    total = np.nanvar(t, ddof=1)
    mse = np.nanmean((t - predictions[:, :1].numpy()) ** 2)
    assert values[0].item() == pytest.approx(1 - (mse - noise) / (total - noise), rel=1e-10)
    assert valid.sum() > 2
    # predictions at the per-image trial means leave only noise: FEVE near 1
    perfect = _no_warnings(feve, torch.nanmean(trials, 1), trials)
    assert (perfect > 0.7).all(), perfect


def test_feve_of_constant_predictions_is_defined():
    predictions, trials = _data()
    predictions[:, 0] = torch.nanmean(trials[:, :, 0])
    values = _no_warnings(feve, predictions, trials)
    assert torch.isfinite(values).all() and abs(values[0].item()) < 0.1, values


def test_feve_without_explainable_variance_is_nan():
    """Pure noise (the same rate for every image, by construction) has no explainable variance."""
    g = torch.Generator().manual_seed(3)
    trials = torch.poisson(torch.full((40, 6, 2), 3.0, dtype=torch.float64), generator=g)
    trials[:, :, 1] += 3 * torch.arange(40, dtype=torch.float64)[:, None]  # neuron 1 is driven
    noise_var = trials[:, :, 0].var(1).mean()
    total_var = trials[:, :, 0].flatten().var()
    if total_var > noise_var:  # by chance; make neuron 0's images differ less than its noise
        trials[:, :, 0] = trials[:, :, 0] - trials[:, :, 0].mean(1, keepdim=True) + 3.0
    with pytest.warns(NoVarianceWarning, match=r"feve is NaN for 1 of 2 neuron indices \[0\]: no explainable variance"):
        values = feve(torch.full((40, 2), 3.0, dtype=torch.float64), trials)
    assert torch.isnan(values[0]) and torch.isfinite(values[1])


def test_summaries_skip_nan():
    values = torch.tensor([0.2, float("nan"), 0.6])
    assert neuron_mean(values) == pytest.approx(0.4)
    assert neuron_mean(np.array([0.5, np.nan])) == pytest.approx(0.5)
    summary = _no_warnings(summarize, {"correlation": values, "feve": torch.full((3,), float("nan"))})
    assert summary["correlation"] == pytest.approx(0.4) and np.isnan(summary["feve"])
