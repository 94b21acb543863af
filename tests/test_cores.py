"""Tests for the cores: shapes, gradients, regularisers, layer features, argument checks."""

from __future__ import annotations

import sys

import pytest
import torch

from encoders.cores import StackedCore, TaskDrivenCore
from encoders.cores.regularizers import laplace, laplace_l2_normalised


def small_core(**overrides) -> StackedCore:
    kwargs = dict(hidden_channels=8, layers=3, input_kernel=5, hidden_kernel=3)
    kwargs.update(overrides)
    return StackedCore(**kwargs)


def assert_all_grads(module: torch.nn.Module) -> None:
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {name}"
        assert param.grad.abs().sum() > 0, f"all-zero gradient for {name}"


# --- regularizers -----------------------------------------------------------------------


def test_laplace_of_delta_filter():
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0
    expected = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
    assert torch.equal(laplace(weight)[0, 0], expected)
    # 4**2 + 4 * (-1)**2 over an energy of 1.
    assert laplace_l2_normalised(weight).item() == pytest.approx(20.0)


def test_laplace_l2_normalised_is_scale_invariant_and_prefers_smooth_filters():
    torch.manual_seed(0)
    noisy = torch.randn(4, 2, 9, 9)
    assert laplace_l2_normalised(3.0 * noisy).item() == pytest.approx(laplace_l2_normalised(noisy).item(), rel=1e-5)
    coords = torch.arange(9.0) - 4
    blob = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / 8.0)
    smooth = blob.expand(4, 2, 9, 9)
    assert laplace_l2_normalised(smooth) < 0.1 * laplace_l2_normalised(noisy)


def test_laplace_l2_normalised_is_a_ratio_of_totals():
    a = torch.zeros(1, 1, 3, 3)
    a[0, 0, 1, 1] = 1.0  # laplace energy 20, energy 1
    b = torch.ones(1, 1, 3, 3)  # laplace with zero padding: corners 2, edges 1, centre 0 -> energy 20, energy 9
    both = torch.cat([a, b])
    assert laplace(b).pow(2).sum().item() == pytest.approx(20.0)
    assert laplace_l2_normalised(both).item() == pytest.approx(40.0 / 10.0)


def test_laplace_rejects_non_conv_weight():
    with pytest.raises(ValueError, match="conv2d weight"):
        laplace_l2_normalised(torch.ones(3, 3))


# --- StackedCore ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "input_shape", "expected"),
    [
        ({}, (1, 20, 24), (8, 16, 20)),  # unpadded 5x5 input conv shrinks by 4
        ({"pad_input": True}, (1, 20, 24), (8, 20, 24)),
        ({"depth_separable": False}, (1, 20, 24), (8, 16, 20)),
        ({"hidden_padding": 0}, (1, 20, 24), (8, 12, 16)),  # two unpadded 3x3 hidden layers
        ({"layers": 1, "hidden_channels": 6}, (1, 20, 24), (6, 16, 20)),
        ({"se_reduction": 4, "input_channels": 3}, (3, 15, 15), (8, 11, 11)),
        ({"input_kernel": 9, "hidden_kernel": 7, "hidden_channels": 12}, (1, 30, 30), (12, 22, 22)),
    ],
)
def test_stacked_core_output_shape(overrides, input_shape, expected):
    core = small_core(**overrides)
    assert core.output_shape(input_shape) == expected
    assert core(torch.randn(2, *input_shape)).shape == (2, *expected)
    assert core.out_channels == expected[0]


def test_stacked_core_structure_matches_config():
    core = small_core(depth_separable=True, se_reduction=2)
    hidden = core.layers[1]
    kinds = [type(m).__name__ for m in hidden]
    assert kinds == ["Conv2d", "Conv2d", "Conv2d", "BatchNorm2d", "ELU", "SqueezeExcitation"]
    assert hidden[1].groups == 8 and hidden[1].kernel_size == (3, 3)
    assert hidden[0].kernel_size == (1, 1) and hidden[2].kernel_size == (1, 1)
    plain = small_core(depth_separable=False).layers[1]
    assert [type(m).__name__ for m in plain] == ["Conv2d", "BatchNorm2d", "ELU"]
    assert core.input_conv.kernel_size == (5, 5) and core.input_conv.padding == (0, 0)
    assert all(m.bias is None for m in core.modules() if isinstance(m, torch.nn.Conv2d))
    assert small_core(batch_norm_momentum=0.3).layers[0][1].momentum == 0.3


def test_output_shape_leaves_batchnorm_and_mode_untouched():
    core = small_core()
    core.train()
    bn = core.layers[0][1]
    before = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    core.output_shape((1, 20, 20))
    assert core.training and all(m.training for m in core.modules())
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])
    core.eval()
    core.output_shape((1, 20, 20))
    assert not core.training


@pytest.mark.parametrize(
    "overrides",
    [{}, {"depth_separable": False}, {"se_reduction": 2, "input_channels": 2}, {"layers": 1}],
)
def test_stacked_core_gradients_reach_every_parameter(overrides):
    torch.manual_seed(0)
    core = small_core(**overrides)
    x = torch.randn(3, core.input_conv.in_channels, 16, 16)
    out = core(x)
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(core)


def test_stacked_core_regularizer_is_nonzero_and_differentiable():
    core = small_core()
    penalty = core.regularizer()
    assert penalty.dim() == 0 and penalty.item() > 0
    expected = core.gamma_input * laplace_l2_normalised(core.input_conv.weight)
    assert penalty.item() == pytest.approx(expected.item())
    penalty.backward()
    assert core.input_conv.weight.grad.abs().sum() > 0
    # gamma_hidden defaults to 0: hidden weights are not penalised.
    assert all(conv.weight.grad is None for conv in core.spatial_convs)


def test_stacked_core_group_sparsity():
    core = small_core(gamma_input=0.0, gamma_hidden=0.5)
    expected = torch.stack(
        [conv.weight.pow(2).sum(dim=(2, 3)).sqrt().mean() for conv in core.spatial_convs]
    ).mean()
    penalty = core.regularizer()
    assert penalty.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    penalty.backward()
    for conv in core.spatial_convs:
        assert conv.weight.grad.abs().sum() > 0
    assert core.input_conv.weight.grad is None
    assert small_core(layers=1).group_sparsity().item() == 0.0


def test_stacked_core_layer_features():
    core = small_core(layers=4).eval()
    x = torch.randn(2, 1, 16, 16)
    feats = core.layer_features(x)
    assert len(feats) == 4
    assert [f.shape for f in feats] == [(2, 8, 12, 12)] * 4
    assert torch.equal(feats[-1], core(x))
    assert not torch.equal(feats[0], feats[1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": 0}, "layers must be a positive integer"),
        ({"hidden_channels": 2.5}, "hidden_channels must be a positive integer"),
        ({"hidden_padding": -1}, "hidden_padding"),
        ({"batch_norm_momentum": 0.0}, "batch_norm_momentum"),
        ({"se_reduction": 16}, "se_reduction"),
        ({"gamma_input": -1.0}, "gamma_input"),
    ],
)
def test_stacked_core_rejects_invalid_args(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_core(**overrides)


def test_stacked_core_rejects_unknown_keyword():
    with pytest.raises(TypeError):
        StackedCore(hidden_kern=3)  # type: ignore[call-arg]


# --- TaskDrivenCore ---------------------------------------------------------------------


def test_task_driven_core_without_torchvision_raises_clear_import_error(monkeypatch):
    # A None entry in sys.modules makes the import fail even where torchvision is installed.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match=r"pip install 'encoders\[torchvision\]'") as info:
        TaskDrivenCore()
    assert "matches the installed torch" in str(info.value)


def test_task_driven_core_rejects_bad_input_channels_before_importing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ValueError, match="input_channels"):
        TaskDrivenCore(input_channels=2)


@pytest.mark.torchvision
def test_task_driven_core_shapes_frozen_and_weights(tmp_path):
    models = pytest.importorskip(
        "torchvision.models", reason="TaskDrivenCore needs the optional torchvision extra (encoders[torchvision]); CI leaves it out because "
        "PyPI's torchvision is a CUDA build that breaks the CPU torch install"
    )
    torch.manual_seed(0)
    reference = models.resnet50(weights=None)
    path = tmp_path / "resnet50.pt"
    torch.save(reference.state_dict(), path)

    core = TaskDrivenCore(model_name="resnet50", layer="layer3.0", weights_path=str(path))
    assert list(dict(core.resnet.named_children())) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    assert len(core.resnet.layer3) == 1
    assert torch.equal(core.resnet.conv1.weight, reference.conv1.weight)
    assert core.out_channels == 1024
    assert core.output_shape((1, 64, 64)) == (1024, 4, 4)

    core.train()
    assert not core.resnet.training and core.head.training
    x = torch.randn(2, 1, 64, 64)
    out = core(x)
    assert out.shape == (2, 1024, 4, 4) and (out >= 0).all()
    (out * torch.randn_like(out)).sum().backward()
    trainable = [name for name, p in core.named_parameters() if p.requires_grad]
    assert trainable == ["head.0.weight", "head.0.bias"]
    assert_all_grads(core)
    assert core.regularizer().item() == 0.0

    feats = core.eval().layer_features(x)
    # stem + 3 blocks of layer1 + 4 of layer2 + layer3.0 + head
    assert len(feats) == 10
    assert torch.equal(feats[-1], core(x))

    tuned = TaskDrivenCore(model_name="resnet18", layer="layer2", input_channels=3, fine_tune=True)
    tuned.train()
    assert tuned.resnet.training and all(p.requires_grad for p in tuned.parameters())
    assert tuned.output_shape((3, 64, 64)) == (128, 8, 8)

    with pytest.raises(ValueError, match="unknown ResNet layer"):
        TaskDrivenCore(model_name="resnet18", layer="layer3.7")
    with pytest.raises(ValueError, match="model_name"):
        TaskDrivenCore(model_name="vgg16")
