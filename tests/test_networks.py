"""EmotionCNN3D shapes and size, and the network factory."""

from __future__ import annotations

import pytest
import torch

from monai_emotion.errors import ConfigError
from monai_emotion.networks import (
    NETWORKS,
    EmotionCNN3D,
    build_network,
    count_parameters,
    encoder_output_shape,
)

SMALL = (20, 24, 16)


@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_heads_shapes_and_features(head):
    torch.manual_seed(0)
    net = EmotionCNN3D(spatial_shape=SMALL, head=head, dropout=0.3).eval()
    x = torch.rand(2, 1, *SMALL)
    logits = net(x)
    assert logits.shape == (2, 5)
    feats = net.features(x)
    assert feats.shape == (2, 128) and (feats >= 0).all()  # post-ReLU embedding
    torch.testing.assert_close(net.classifier(feats), logits)  # features feed the last layer


def test_gap_head_takes_any_size():
    net = EmotionCNN3D(spatial_shape=None, head="gap").eval()
    assert net(torch.rand(1, 1, 12, 16, 20)).shape == (1, 5)
    assert count_parameters(net.hidden) == 64 * 128 + 128


def test_grid_head_shape_parameters_and_gradients():
    torch.manual_seed(0)
    net = EmotionCNN3D(spatial_shape=None, head="grid")  # size-independent: no shape needed
    assert net.feature_shape == (64, 4, 4, 2)
    # 64 channels x 4 x 4 x 2 average-pooled cells feed the 128-unit dense layer
    assert count_parameters(net.hidden) == 64 * 4 * 4 * 2 * 128 + 128 == 262_272
    # convs without bias + batch norm: 16*27 + 32, 32*16*27 + 64, 64*32*27 + 128
    assert count_parameters(net.encoder) == 432 + 32 + 13_824 + 64 + 55_296 + 128 == 69_776
    assert count_parameters(net) == 69_776 + 262_272 + 128 * 5 + 5 == 332_693  # the bundle README's
    for shape in [(17, 21, 6), SMALL, (33, 40, 12)]:  # the demo grid, and others
        assert net.eval()(torch.rand(2, 1, *shape)).shape == (2, 5)

    net.train()
    x = torch.rand(3, 1, *SMALL, requires_grad=True)
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 2, 4])).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_flatten_head_full_size_is_the_papers_139_5_m():
    # meta device: shapes only, nothing allocated
    with torch.device("meta"):
        net = EmotionCNN3D()
    assert net.feature_shape == (64, 33, 43, 12)
    assert count_parameters(net.hidden) == 64 * 33 * 43 * 12 * 128 + 128 == 139_493_504
    assert round(count_parameters(net) / 1e6, 1) == 139.6  # docs/domain.md: 139.6 M in total
    # "valid" padding could not have produced the paper's number
    assert encoder_output_shape((132, 175, 48), padding="valid") == (64, 29, 40, 8)


def test_flatten_head_rejects_other_input_size():
    net = EmotionCNN3D(spatial_shape=SMALL).eval()
    with pytest.raises(ConfigError, match="head='gap'"):
        net(torch.rand(1, 1, 28, 24, 16))


def test_scriptable_for_ckpt_export():
    net = EmotionCNN3D(spatial_shape=SMALL).eval()
    x = torch.rand(1, 1, *SMALL)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"head": "mlp"}, "flatten"),
        ({"pool": (True, True)}, "one entry per conv layer"),
        ({"spatial_shape": (3, 8, 8)}, "shrinks"),
        ({"spatial_shape": None}, "spatial_shape"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EmotionCNN3D(**kwargs)


@pytest.mark.parametrize("name", ["EmotionCNN3D", "emotioncnn3d", "DenseNet121", "resnet18"])
def test_factory_builds_by_name(name):
    extra = {"spatial_shape": (32, 32, 32)}
    net = build_network(name, in_channels=1, num_classes=5, **extra).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32, 32)).shape == (1, 5)


def test_factory_errors_list_valid_names():
    with pytest.raises(ConfigError) as err:
        build_network("VGG16")
    for name in NETWORKS:
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="bogus"):
        build_network("EmotionCNN3D", bogus=1)
    with pytest.raises(ConfigError, match="disagree"):
        build_network("resnet18", num_classes=5, out_channels=4)
    assert build_network("resnet18", out_channels=3).fc.out_features == 3
