import pytest
import torch

from components.workloads.image_classifier.model import (
    ConvNet,
    Residual,
    ResNet18,
    ResnetLayer,
    SimpleNet,
    build,
    cam,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
ARCHS = ["simplenet", "convnet", "convbnnet", "resnet", "resnet18"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_arch_fits_every_input_size(arch, shape):
    torch.manual_seed(0)
    m = build(arch, shape, 10).eval()
    x = torch.randn(3, *shape)
    assert m(x).shape == (3, 10)
    if arch != "simplenet":
        f = m.features(x)
        assert f.shape[0] == 3 and f.shape[1] == m.classifier.in_features and min(f.shape[2:]) >= 1


def test_kinds_are_what_the_names_say():
    assert isinstance(build("simplenet", (1, 8, 8), 10), SimpleNet)
    conv = build("convnet", (3, 32, 32), 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in conv.modules())
    strides = [m.stride for m in conv.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides and all(s == (2, 2) for s in strides)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build("convbnnet", (3, 32, 32), 10).modules())
    assert any(isinstance(m, ResnetLayer) for m in build("resnet", (3, 32, 32), 10).modules())
    r18 = build("resnet18", (3, 32, 32), 10)
    assert isinstance(r18, ResNet18) and sum(isinstance(m, Residual) for m in r18.modules()) == 8
    assert sum(m.proj is not None for m in r18.modules() if isinstance(m, Residual)) == 3  # 1x1 projections


def test_resnet_layer_is_identity_plus_a_function():
    layer = ResnetLayer(4, 4, stride=1).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        layer.conv.weight.zero_()  # f(x) = BN(relu(0)) = BN's bias (zero at init)
        assert torch.allclose(layer(x), x, atol=1e-5)


def test_cam_weights_features_by_the_class_row():
    torch.manual_seed(0)
    m = build("convnet", (1, 28, 28), 10).eval()
    x = torch.randn(2, 1, 28, 28)
    maps = cam(m, x, torch.tensor([3, 7]))
    feats = m.features(x)
    assert maps.shape == feats.shape[:1] + feats.shape[2:]
    expect = (m.classifier.weight[3][:, None, None] * feats[0]).sum(0)
    assert torch.allclose(maps[0], expect, atol=1e-5)
    # for the max-pooled convnet, the logit of a class is its weights . the pooled features
    pooled = torch.amax(feats, dim=(2, 3))
    assert torch.allclose(m(x), pooled @ m.classifier.weight.T + m.classifier.bias, atol=1e-5)
    with pytest.raises(ValueError, match="no CAM"):
        cam(build("simplenet", (1, 8, 8), 10), torch.randn(1, 1, 8, 8))


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown image architecture"):
        build("vit", (1, 8, 8), 10)
    assert isinstance(build("convbnnet", (1, 8, 8), 10), ConvNet)
