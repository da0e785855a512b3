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
    class_probs,
    load_model,
    publish_model,
    shifted_views,
    tta_shift,
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


def test_shifted_views_move_the_image_and_fill_with_zeros():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    assert len(shifted_views(x, 0)) == 1
    views = shifted_views(x, 1)
    assert len(views) == 5 and torch.equal(views[0], x)
    down, up, right, left = views[1:]
    assert torch.equal(down[0, 0, 1:], x[0, 0, :3]) and not down[0, 0, 0].any()  # content moved down a row
    assert torch.equal(up[0, 0, :3], x[0, 0, 1:]) and not up[0, 0, 3].any()
    assert torch.equal(right[0, 0, :, 1:], x[0, 0, :, :3]) and not right[0, 0, :, 0].any()
    assert torch.equal(left[0, 0, :, :3], x[0, 0, :, 1:]) and not left[0, 0, :, 3].any()
    assert tta_shift((1, 8, 8), True) == 1 and tta_shift((3, 32, 32), True) == 4 and tta_shift((3, 32, 32), False) == 0


def test_class_probs_average_the_shifted_views():
    torch.manual_seed(0)
    m = build("resnet", (1, 8, 8), 10).eval()
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor([0.3]), torch.tensor([0.4])
    plain = class_probs(m, x, mean, std, 0)
    with torch.no_grad():
        expect = torch.stack([torch.softmax(m((v.float() / 255 - 0.3) / 0.4), 1) for v in shifted_views(x, 1)]).mean(0)
    tta = class_probs(m, x, mean, std, 1)
    assert torch.allclose(tta, expect, atol=1e-6) and not torch.allclose(tta, plain, atol=1e-4)
    assert torch.allclose(tta.sum(1), torch.ones(3), atol=1e-5)


def test_the_model_file_carries_its_test_time_shift(tmp_path):
    from components.workloads.image_classifier.evaluate import predict

    torch.manual_seed(0)
    m = build("resnet", (1, 8, 8), 10).eval()
    data = {"shape": [1, 8, 8], "n_classes": 10, "classes": [str(i) for i in range(10)], "mean": [0.3], "std": [0.4]}
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    for tta, shift in ((True, 1), (False, 0)):
        publish_model(tmp_path / f"{tta}.pt", {"model": m.state_dict()}, data, "resnet", 0.0, tta)
        net, blob = load_model(tmp_path / f"{tta}.pt")
        assert blob["tta_shift"] == shift
        assert torch.allclose(predict(net, blob, x), class_probs(m, x, torch.tensor([0.3]), torch.tensor([0.4]), shift))
    del blob["tta_shift"]  # a file written before TTA existed predicts from the image alone
    assert torch.allclose(predict(net, blob, x), class_probs(m, x, torch.tensor([0.3]), torch.tensor([0.4]), 0))
