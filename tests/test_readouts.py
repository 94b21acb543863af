"""Tests for the readouts: shapes, gradients, sampling, exact read-out values, attention, positional encoding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from encoders.readouts import AttentionReadout, GaussianReadout, Readout, initial_bias, sinusoidal_2d


def assert_all_grads(module: torch.nn.Module) -> None:
    for name, param in module.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {name}"
        assert param.grad.abs().sum() > 0, f"all-zero gradient for {name}"


# --- bias initialisation ----------------------------------------------------------------


def test_initial_bias_inverts_elu_plus_one():
    mean = torch.tensor([0.2, 1.0, 3.5, 0.0])
    bias = initial_bias(mean, 4)
    rate = F.elu(bias) + 1
    assert torch.allclose(rate[:3], mean[:3], atol=1e-6)
    assert rate[3].item() == pytest.approx(1e-3, rel=1e-4)  # non-positive means are clamped to a small rate
    assert torch.equal(initial_bias(None, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="n_neurons is 5"):
        initial_bias(mean, 5)


@pytest.mark.parametrize("readout_cls", [GaussianReadout, AttentionReadout])
def test_readout_bias_initialised_from_mean_activity(readout_cls):
    mean = torch.tensor([0.5, 2.0, 1.0])
    readout = readout_cls((8, 4, 5), 3, mean_activity=mean).eval()
    with torch.no_grad():
        readout.features.zero_()
    out = readout(torch.randn(2, 8, 4, 5))
    assert torch.allclose(F.elu(out) + 1, mean.expand(2, 3), atol=1e-6)


@pytest.mark.parametrize("readout_cls", [GaussianReadout, AttentionReadout])
@pytest.mark.parametrize(
    ("in_shape", "n_neurons", "message"),
    [((8, 4), 3, "in_shape"), ((8, 0, 4), 3, "in_shape"), ((8, 4, 4), 0, "n_neurons")],
)
def test_readouts_reject_bad_shapes(readout_cls, in_shape, n_neurons, message):
    with pytest.raises(ValueError, match=message):
        readout_cls(in_shape, n_neurons)


# --- GaussianReadout --------------------------------------------------------------------


@pytest.mark.parametrize("gauss_type", ["isotropic", "uncorrelated", "full"])
@pytest.mark.parametrize(("in_shape", "batch"), [((8, 6, 7), 3), ((3, 1, 1), 1)])
def test_gaussian_output_shape(gauss_type, in_shape, batch):
    readout = GaussianReadout(in_shape, 11, gauss_type=gauss_type)
    x = torch.randn(batch, *in_shape)
    assert readout.train()(x).shape == (batch, 11)
    assert readout.eval()(x).shape == (batch, 11)
    sigma_shapes = {"isotropic": (11, 1), "uncorrelated": (11, 2), "full": (11, 2, 2)}
    assert readout.sigma.shape == sigma_shapes[gauss_type]
    assert readout.features.shape == (11, in_shape[0])  # (n_neurons, F) in every readout


def test_gaussian_positions_and_init():
    torch.manual_seed(0)
    readout = GaussianReadout((4, 5, 5), 200, init_mu_range=0.2, gauss_type="isotropic", init_sigma=0.3)
    pos = readout.positions()
    assert pos.shape == (200, 2) and not pos.requires_grad
    assert pos.abs().max() <= 0.2 and pos.std() > 0.05
    assert torch.all(readout.sigma == 0.3)
    assert torch.allclose(readout.features, torch.full((200, 4), 0.25))


@pytest.mark.parametrize("gauss_type", ["isotropic", "uncorrelated", "full"])
def test_gaussian_gradients_reach_every_parameter(gauss_type):
    torch.manual_seed(0)
    readout = GaussianReadout((4, 6, 6), 5, gauss_type=gauss_type).train()
    x = torch.randn(8, 4, 6, 6)
    out = readout(x)
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(readout)


def test_gaussian_regularizer_nonzero_and_differentiable():
    readout = GaussianReadout((4, 6, 6), 5, gamma_features=0.5)
    penalty = readout.regularizer()
    # 20 weights of 1/4 each, summed.
    assert penalty.item() == pytest.approx(0.5 * 5.0)
    penalty.backward()
    assert torch.allclose(readout.features.grad, torch.full((5, 4), 0.5))
    assert GaussianReadout((4, 6, 6), 5).regularizer().item() > 0


def test_gaussian_samples_in_train_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    readout = GaussianReadout((4, 8, 8), 6, init_sigma=0.2)
    x = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)  # the same image twice
    readout.train()
    first, second = readout(x), readout(x)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first[0], first[1])  # a position is sampled per image
    readout.eval()
    assert torch.equal(readout(x), readout(x))
    assert torch.equal(readout(x)[0], readout(x)[1])


def test_gaussian_sample_spread_matches_sigma():
    torch.manual_seed(0)
    readout = GaussianReadout((1, 4, 4), 2, gauss_type="uncorrelated", init_mu_range=0.1)
    with torch.no_grad():
        readout.sigma.copy_(torch.tensor([[0.05, 0.2], [0.1, 0.1]]))
    grid = readout.sample_grid(4000, sample=True)[:, :, 0]  # (B, n, 2)
    assert torch.allclose(grid.std(dim=0), readout.sigma, rtol=0.1)
    assert torch.allclose(grid.mean(dim=0), readout.mu, atol=0.02)


def test_gaussian_full_sigma_is_a_matrix_on_the_noise():
    readout = GaussianReadout((1, 4, 4), 1, gauss_type="full")
    with torch.no_grad():
        readout.mu.zero_()
        # Only x moves, driven by the second noise component.
        readout.sigma.copy_(torch.tensor([[[0.0, 0.3], [0.0, 0.0]]]))
    torch.manual_seed(1)
    grid = readout.sample_grid(500, sample=True)[:, 0, 0]
    torch.manual_seed(1)
    noise = torch.randn(500, 1, 1, 2)[:, 0, 0]
    assert torch.all(grid[:, 1] == 0)
    assert torch.allclose(grid[:, 0], (0.3 * noise[:, 1]).clamp(-1, 1))


def test_gaussian_reads_the_feature_at_a_known_pixel():
    channels, h, w = 3, 5, 7
    c, i, j = torch.meshgrid(torch.arange(channels), torch.arange(h), torch.arange(w), indexing="ij")
    features = (100.0 * c + 10.0 * i + j).float()[None]  # feature[c, i, j] = 100c + 10i + j
    pixels = [(1, 4), (0, 0), (4, 6), (2, 3)]  # (row, col)
    readout = GaussianReadout((channels, h, w), len(pixels), gauss_type="isotropic")
    torch.manual_seed(0)
    with torch.no_grad():
        # align_corners=True: pixel k of n sits at -1 + 2k / (n - 1).
        readout.mu.copy_(torch.tensor([[-1 + 2 * col / (w - 1), -1 + 2 * row / (h - 1)] for row, col in pixels]))
        readout.sigma.fill_(1e-7)
        readout.features.copy_(torch.randn(len(pixels), channels))
        readout.bias.copy_(torch.randn(len(pixels)))
    expected = torch.stack(
        [features[0, :, row, col] @ readout.features[n] + readout.bias[n] for n, (row, col) in enumerate(pixels)]
    )
    assert torch.allclose(readout.eval()(features)[0], expected, atol=1e-4)
    assert torch.allclose(readout.train()(features)[0], expected, atol=1e-3)  # tiny sigma: sampling barely moves


def test_gaussian_clamps_mu_into_the_image():
    readout = GaussianReadout((2, 4, 4), 2)
    with torch.no_grad():
        readout.mu.copy_(torch.tensor([[1.5, -3.0], [0.2, 0.1]]))
    readout.eval()(torch.randn(1, 2, 4, 4))
    assert torch.equal(readout.mu.detach(), torch.tensor([[1.0, -1.0], [0.2, 0.1]]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gauss_type": "diag"}, "gauss_type must be one of"),
        ({"init_mu_range": 0.0}, "init_mu_range"),
        ({"init_sigma": -0.1}, "init_sigma"),
        ({"gamma_features": -1.0}, "gamma_features"),
    ],
)
def test_gaussian_rejects_invalid_args(overrides, message):
    with pytest.raises(ValueError, match=message):
        GaussianReadout((4, 5, 5), 3, **overrides)


def test_gaussian_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expected features"):
        GaussianReadout((4, 5, 5), 3)(torch.randn(1, 5, 5, 5))


# --- positional encoding ----------------------------------------------------------------


def test_sinusoidal_2d_tiny_case():
    pe = sinusoidal_2d(4, 2, 3)
    rows = torch.arange(2.0)[:, None].expand(2, 3)
    cols = torch.arange(3.0)[None, :].expand(2, 3)
    assert pe.shape == (4, 2, 3)
    assert torch.allclose(pe[0], torch.sin(rows)) and torch.allclose(pe[1], torch.cos(rows))
    assert torch.allclose(pe[2], torch.sin(cols)) and torch.allclose(pe[3], torch.cos(cols))
    assert pe[0, 1, 0].item() == pytest.approx(math.sin(1.0))


def test_sinusoidal_2d_frequencies():
    pe = sinusoidal_2d(8, 3, 2)
    # Per axis 4 channels: frequencies 1 and 10000 ** (-2 / 4) = 0.01.
    assert pe[2, 2, 0].item() == pytest.approx(math.sin(0.02))
    assert pe[3, 2, 1].item() == pytest.approx(math.cos(0.02))
    assert pe[6, 0, 1].item() == pytest.approx(math.sin(0.01))
    assert torch.allclose(pe[4], torch.sin(torch.arange(2.0)).expand(3, 2))


@pytest.mark.parametrize("channels", [6, 2, 0])
def test_sinusoidal_2d_rejects_bad_channels(channels):
    with pytest.raises(ValueError, match="multiple of 4"):
        sinusoidal_2d(channels, 3, 3)


# --- AttentionReadout -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_shape", "embed_dim", "heads", "batch"),
    [((8, 5, 6), 16, 4, 3), ((4, 1, 1), 4, 1, 2), ((12, 3, 3), 6, 3, 1)],
)
def test_attention_output_shape_and_maps_sum_to_one(in_shape, embed_dim, heads, batch):
    readout = AttentionReadout(in_shape, 7, embed_dim=embed_dim, heads=heads).eval()
    x = torch.randn(batch, *in_shape)
    assert readout(x).shape == (batch, 7)
    maps = readout.spatial_maps(x)
    assert maps.shape == (batch, 7, in_shape[1], in_shape[2])
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(batch, 7), atol=1e-5)
    assert (maps >= 0).all()


@pytest.mark.parametrize("in_shape", [(8, 6, 8), (8, 5, 7)])
def test_attention_pool_attends_over_pooled_positions(in_shape):
    """pool=2 is the same readout applied to 2x2-average-pooled features; its maps, back on the core's grid, sum to 1."""
    torch.manual_seed(0)
    pooled = AttentionReadout(in_shape, 5, embed_dim=8, heads=2, pool=2).eval()
    channels, h, w = in_shape
    plain = AttentionReadout((channels, h // 2, w // 2), 5, embed_dim=8, heads=2).eval()
    plain.load_state_dict(pooled.state_dict())
    features = torch.randn(3, *in_shape)
    torch.testing.assert_close(pooled(features), plain(F.avg_pool2d(features, 2)))
    neurons = torch.tensor([4, 0, 2])
    torch.testing.assert_close(pooled(features, neurons), pooled(features)[torch.arange(3), neurons])
    maps = pooled.spatial_maps(features)
    assert maps.shape == (3, 5, h, w)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, 5))
    # each pooled weight spread evenly over its 2x2 window; rows/columns beyond the pooled windows get none
    small = plain.spatial_maps(F.avg_pool2d(features, 2))
    torch.testing.assert_close(maps[..., 0:2, 0:2], small[..., :1, :1].expand(-1, -1, 2, 2) / 4)
    assert (maps[..., 2 * (h // 2):, :] == 0).all() and (maps[..., 2 * (w // 2):] == 0).all()


def test_attention_positional_encoding_is_a_fixed_buffer():
    readout = AttentionReadout((8, 3, 4), 2)
    assert "position_encoding" in dict(readout.named_buffers())
    assert all("position" not in name for name, _ in readout.named_parameters())
    assert torch.equal(readout.position_encoding, sinusoidal_2d(8, 3, 4))
    # The position encoding makes identical features at different places distinguishable.
    maps = readout.eval().spatial_maps(torch.zeros(1, 8, 3, 4))
    assert maps.std() > 0


def test_attention_gradients_reach_every_parameter():
    torch.manual_seed(0)
    readout = AttentionReadout((8, 4, 4), 5, embed_dim=8, heads=2).train()
    out = readout(torch.randn(3, 8, 4, 4))
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(readout)


def test_attention_regularizer_nonzero_and_differentiable():
    readout = AttentionReadout((8, 4, 4), 5, embed_dim=8, heads=2, gamma_features=0.1, gamma_query=0.01)
    penalty = readout.regularizer()
    expected = 0.1 * readout.features.abs().sum() + 0.01 * readout.query.abs().sum()
    assert penalty.item() == pytest.approx(expected.item())
    penalty.backward()
    assert torch.allclose(readout.features.grad, torch.full((5, 8), 0.1))
    assert torch.allclose(readout.query.grad, 0.01 * readout.query.sign())
    assert AttentionReadout((8, 4, 4), 5).regularizer().item() > 0


def one_hot_readout() -> tuple[AttentionReadout, torch.Tensor]:
    """Keys and values equal the features; each neuron's query picks one channel."""
    channels, h, w = 8, 4, 5
    readout = AttentionReadout((channels, h, w), 2, embed_dim=channels, heads=1, dropout=0.0).eval()
    with torch.no_grad():
        readout.position_encoding.zero_()
        readout.to_key_value.weight.copy_(torch.cat([torch.eye(channels), torch.eye(channels)]))
        readout.query.zero_()
        readout.query[0, 3] = 50.0
        readout.query[1, 5] = 50.0
        readout.features.copy_(torch.randn(2, channels))
        readout.bias.copy_(torch.tensor([0.5, -0.25]))
    features = torch.zeros(1, channels, h, w)
    features[0, 3, 2, 1] = 1.0
    features[0, 5, 0, 4] = 2.0
    return readout, features


def test_attention_one_hot_key_attends_where_expected():
    readout, features = one_hot_readout()
    maps = readout.spatial_maps(features)[0]
    assert maps[0, 2, 1].item() > 0.999
    assert maps[1, 0, 4].item() > 0.999
    # Pooled values are then the one-hot feature vectors scaled by their amplitude.
    expected = torch.stack([readout.features[0, 3] + 0.5, 2.0 * readout.features[1, 5] - 0.25])
    assert torch.allclose(readout(features)[0], expected, atol=1e-3)


def test_attention_temperature_divides_the_logits():
    torch.manual_seed(0)
    readout = AttentionReadout((8, 3, 3), 4, embed_dim=8, heads=2, dropout=0.0).eval()
    x = torch.randn(2, 8, 3, 3)
    hot = AttentionReadout((8, 3, 3), 4, embed_dim=8, heads=2, dropout=0.0, temperature=2.0).eval()
    hot.load_state_dict(readout.state_dict())
    with torch.no_grad():
        readout.query.mul_(0.5)
    assert torch.allclose(hot.spatial_maps(x), readout.spatial_maps(x), atol=1e-6)


def test_attention_uses_scaled_dot_product():
    readout, features = one_hot_readout()
    with torch.no_grad():
        readout.query.mul_(1.0 / 50.0)  # logit 1 * scale at the hot pixel, 0 elsewhere
    maps = readout.spatial_maps(features)[0]
    hot = math.exp(1.0 / math.sqrt(8))
    assert maps[0, 2, 1].item() == pytest.approx(hot / (hot + 19), rel=1e-5)


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    readout = AttentionReadout((8, 3, 3), 4, embed_dim=8, heads=2, dropout=0.5)
    x = torch.randn(2, 8, 3, 3)
    assert not torch.allclose(readout.train()(x), readout(x))
    readout.eval()
    assert torch.equal(readout(x), readout(x))


@pytest.mark.parametrize(
    ("in_shape", "overrides", "message"),
    [
        ((8, 3, 3), {"embed_dim": 10, "heads": 4}, r"embed_dim \(10\) must be divisible by heads \(4\)"),
        ((6, 3, 3), {}, "multiple of 4"),
        ((8, 3, 3), {"heads": 0}, "heads must be a positive integer"),
        ((8, 3, 3), {"temperature": 0.0}, "temperature"),
        ((8, 3, 3), {"dropout": 1.0}, "dropout"),
        ((8, 3, 3), {"gamma_query": -1.0}, "gamma_query"),
        ((8, 3, 3), {"pool": 4}, "pool must be an integer from 1 to the feature size 3"),
        ((8, 3, 3), {"pool": 0}, "pool"),
    ],
)
def test_attention_rejects_invalid_args(in_shape, overrides, message):
    with pytest.raises(ValueError, match=message):
        AttentionReadout(in_shape, 3, **overrides)


def test_attention_rejects_wrong_feature_shape():
    with pytest.raises(ValueError, match="expected features"):
        AttentionReadout((8, 3, 3), 2)(torch.randn(1, 8, 4, 3))


@pytest.mark.parametrize("kind", ["gaussian", "attention"])
def test_paired_mode_equals_gathering_the_full_output(kind):
    """forward(features, neurons) gives image b's response of neuron neurons[b] only."""
    torch.manual_seed(0)
    in_shape = (8, 6, 7)
    readout = (GaussianReadout(in_shape, 5) if kind == "gaussian" else AttentionReadout(in_shape, 5, embed_dim=8, heads=2)).eval()
    with torch.no_grad():
        readout.features.normal_()
    features = torch.randn(9, *in_shape)
    neurons = torch.tensor([0, 4, 2, 2, 1, 3, 0, 4, 1])
    full = readout(features)
    paired = readout(features, neurons)
    assert paired.shape == (9,)
    torch.testing.assert_close(paired, full[torch.arange(9), neurons], rtol=1e-5, atol=1e-6)


def test_readout_locations_in_feature_grid_cells():
    from encoders.encoder import Encoder
    from encoders.datasets.transforms import ImageTransform

    sessions = {"s": {"neuron_ids": ["a", "b", "c"], "mean_response": [1.0] * 3, "n_train": 10}}
    core = {"type": "stacked", "hidden_channels": 4, "layers": 1, "input_kernel": 5}
    transform = ImageTransform().state()
    gaussian = Encoder(core, {"type": "gaussian"}, sessions, [1, 16, 16], transform).readouts["s"]
    assert gaussian.in_shape == (4, 12, 12)
    with torch.no_grad():
        gaussian.mu.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 1.0]]))
    # align_corners=True: -1 and 1 are the centres of the border cells 0 and 11
    torch.testing.assert_close(gaussian.locations(), torch.tensor([[0.0, 0.0], [11.0, 11.0], [5.5, 11.0]]))

    attention = Encoder(core, {"type": "attention", "embed_dim": 4, "heads": 1}, sessions, [1, 16, 16], transform).readouts["s"]
    maps = torch.zeros(3, 12, 12)
    maps[0, 2, 7] = 1.0  # all weight on row 2, column 7
    maps[1, 4, 0] = maps[1, 4, 10] = 0.5  # halfway between two cells
    maps[2] = 1 / 144  # uniform: the grid's middle
    attention.spatial_maps = lambda features: maps[None].expand(features.shape[0], -1, -1, -1)
    torch.testing.assert_close(attention.locations(torch.zeros(2, 4, 12, 12)), torch.tensor([[7.0, 2.0], [5.0, 4.0], [5.5, 5.5]]))


def test_every_readout_says_where_it_reads():
    """locations() on the feature grid: the Gaussian's mean position, the attention's centre of mass; maps sum to 1."""
    torch.manual_seed(0)
    gaussian = GaussianReadout((8, 5, 7), 3).eval()
    with torch.no_grad():
        gaussian.mu.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.5]]))  # (x, y) in [-1, 1]
    features = torch.randn(2, 8, 5, 7)
    assert torch.allclose(gaussian.locations(features), torch.tensor([[0.0, 0.0], [6.0, 4.0], [3.0, 3.0]]))
    maps = gaussian.spatial_maps(features)
    assert maps.shape == (2, 3, 5, 7) and torch.allclose(maps.sum((2, 3)), torch.ones(2, 3))
    assert torch.allclose(gaussian.locations(features), Readout.locations(gaussian, features), atol=1e-5)
    attention = AttentionReadout((8, 5, 7), 3, embed_dim=8, heads=2).eval()
    maps = attention.spatial_maps(features)
    assert maps.shape == (2, 3, 5, 7) and torch.allclose(maps.sum((2, 3)), torch.ones(2, 3), atol=1e-5)
    xy = attention.locations(features)
    assert xy.shape == (3, 2) and (xy[:, 0] >= 0).all() and (xy[:, 0] <= 6).all() and (xy[:, 1] <= 4).all()


def test_attention_shared_key_value_is_one_projection_for_all_sessions():
    from encoders.datasets.transforms import ImageTransform
    from encoders.encoder import Encoder

    sessions = {s: {"neuron_ids": [f"{s}{i}" for i in range(n)], "mean_response": [1.0] * n, "n_train": 10}
                for s, n in (("a", 3), ("b", 5), ("c", 2))}
    core = {"type": "stacked", "hidden_channels": 4, "layers": 1, "input_kernel": 5}
    readout = {"type": "attention", "embed_dim": 4, "heads": 1}
    args = (core, sessions, [1, 12, 12], ImageTransform().state())
    torch.manual_seed(0)
    shared = Encoder(args[0], {**readout, "shared_key_value": True}, *args[1:])
    separate = Encoder(args[0], readout, *args[1:])
    assert shared.readouts["a"].to_key_value is shared.readouts["b"].to_key_value is shared.readouts["c"].to_key_value
    assert separate.readouts["a"].to_key_value is not separate.readouts["b"].to_key_value
    n_projection = 4 * 2 * 4
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(separate) - count(shared) == 2 * n_projection
    # one session's loss moves the projection every session uses
    before = shared.readouts["c"].to_key_value.weight.detach().clone()
    shared(torch.randn(2, 1, 12, 12), "a").sum().backward()
    torch.optim.SGD(shared.parameters(), lr=0.1).step()
    assert not torch.equal(before, shared.readouts["c"].to_key_value.weight)
    # a state dict round trip keeps the tie and the values
    copy = Encoder(args[0], {**readout, "shared_key_value": True}, *args[1:])
    copy.load_state_dict(shared.state_dict())
    assert copy.readouts["a"].to_key_value is copy.readouts["c"].to_key_value
    images = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(copy.eval()(images, "b"), shared.eval()(images, "b"))
