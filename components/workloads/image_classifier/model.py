"""Image classifiers: the fast.ai (2017, lesson 7) CIFAR-10 progression and d2l's ResNet-18.

simplenet -> convnet -> convbnnet -> resnet -> resnet18, sized for the input (8x8 digits,
28x28 grayscale, 32x32 colour). The convolutional ones expose `features(x)`, the last conv
activations (B, C, h, w), and end in global pooling + one linear layer, so a class
activation map is `classifier.weight[class] . features` (`cam`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from components.data.parquet import atomic_path
from components.workloads.image_classifier.data import normalize
from components.workloads.modules import build as build_named
from components.workloads.modules import is_import_path

Arch = Literal["simplenet", "convnet", "convbnnet", "resnet", "resnet18"]


class SimpleNet(nn.Module):
    """A multilayer perceptron over the flattened pixels (the notes' one-hidden-layer net)."""

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...] = (256,),
                 dropout: float = 0.0):
        super().__init__()
        c, h, w = in_shape
        sizes = [c * h * w, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(sizes[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def _n_stride2(size: int, widths: int) -> int:
    # how many stride-2 layers fit before the feature map falls under 2x2
    n = 0
    while size > 2 and n < widths:
        size = (size + 1) // 2
        n += 1
    return n


class BnLayer(nn.Module):
    """conv (3x3) -> ReLU -> BatchNorm, as the notes order them."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class ResnetLayer(BnLayer):
    """x + f(x): a stride-1 BnLayer with an identity shortcut (the notes' ResnetLayer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class ConvNet(nn.Module):
    """Stride-2 3x3 convs, then adaptive max pooling and one linear layer. `bn` adds
    BatchNorm after each conv (ConvBnNet); `res` adds residual layers after each (ResNet)."""

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, widths: tuple[int, ...] = (32, 64, 128),
                 bn: bool = False, res: bool = False, dropout: float = 0.0):
        super().__init__()
        c, h, w = in_shape
        n = max(1, _n_stride2(min(h, w), len(widths)))
        widths = widths[:n]
        layers: list[nn.Module] = []
        if bn:
            # the notes start ConvBnNet with a wider 5x5 stride-1 conv
            layers += [nn.Conv2d(c, widths[0] // 2, 5, padding=2), nn.ReLU()]
            c = widths[0] // 2
        for wd in widths:
            if bn or res:
                layers.append(BnLayer(c, wd))
                if res:
                    layers += [ResnetLayer(wd, wd, stride=1), ResnetLayer(wd, wd, stride=1)]
            else:
                layers += [nn.Conv2d(c, wd, 3, stride=2, padding=1), nn.ReLU()]
            c = wd
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, C, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.adaptive_max_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(self.drop(f))


class Residual(nn.Module):
    """d2l's residual block: two 3x3 conv + BN, with a 1x1 projection shortcut when the
    shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(c_out), nn.BatchNorm2d(c_out)
        self.proj = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
                     if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.proj(x) if self.proj is not None else x))


class ResNet18(nn.Module):
    """d2l's ResNet-18: stem, four stages of two Residual blocks (64, 128, 256, 512), global
    average pooling, linear. For small inputs (<= 32 px) the stem is a 3x3 stride-1 conv
    without max pooling, and stages stop halving once the map is 2x2."""

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.0, width: int = 64):
        super().__init__()
        c, h, w = in_shape
        size = min(h, w)
        if size > 32:
            stem = [nn.Conv2d(c, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                    nn.MaxPool2d(3, stride=2, padding=1)]
            size = (size + 3) // 4
        else:
            stem = [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        blocks: list[nn.Module] = []
        c_in = width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 2 if i > 0 and size > 2 else 1
            size = (size + 1) // 2 if stride == 2 else size
            blocks += [Residual(c_in, c_out, stride), Residual(c_out, c_out)]
            c_in = c_out
        self.body = nn.Sequential(*stem, *blocks)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(self.drop(f))


def build(arch: Arch | str, in_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.0) -> nn.Module:
    """The classifier named by `arch` for (C, H, W) inputs: one of ours, or the user's by import
    path (`components/workloads/modules.py`)."""
    if is_import_path(arch):
        return build_named(arch, "image_classifier.train.arch", in_shape, n_classes, dropout)
    if arch == "simplenet":
        return SimpleNet(in_shape, n_classes, dropout=dropout)
    if arch == "convnet":
        return ConvNet(in_shape, n_classes, dropout=dropout)
    if arch == "convbnnet":
        return ConvNet(in_shape, n_classes, bn=True, dropout=dropout)
    if arch == "resnet":
        return ConvNet(in_shape, n_classes, res=True, dropout=dropout)
    if arch == "resnet18":
        return ResNet18(in_shape, n_classes, dropout=dropout)
    raise ValueError(f"unknown image architecture {arch!r}")


def tta_shift(shape: tuple[int, int, int] | list[int], tta: bool) -> int:
    """Pixels the test-time shifts move an image by: the training crops' pad (size//8, at least 1)."""
    return max(1, min(shape[1:]) // 8) if tta else 0


def shifted_views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """x (B, C, H, W) and, when shift > 0, x moved by `shift` pixels down, up, right and left
    (zero-filled, as the training crops pad)."""
    if not shift:
        return [x]
    h, w = x.shape[2:]
    s = shift
    padded = F.pad(x, (s, s, s, s))
    return [x] + [padded[:, :, i:i + h, j:j + w] for i, j in ((0, s), (2 * s, s), (s, 0), (s, 2 * s))]


@torch.no_grad()
def class_probs(model: nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                shift: int = 0) -> torch.Tensor:
    """Class probabilities (B, n_classes) for uint8 images x: the softmax averaged over the image
    and its shifted views (test-time augmentation, fast.ai's `TTA`) when shift > 0."""
    views = shifted_views(x, shift)
    return torch.stack([torch.softmax(model(normalize(v, mean, std)).float(), 1) for v in views]).mean(0)


@torch.no_grad()
def cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Class activation maps (B, h, w): the last conv features weighted by the classifier row
    of each image's predicted (or given) class, as in the notes."""
    if not hasattr(model, "features"):
        raise ValueError(f"{type(model).__name__} has no convolutional features: no CAM")
    model.eval()
    feats = model.features(x)  # (B, C, h, w)
    if classes is None:
        classes = model(x).argmax(1)
    w = model.classifier.weight[classes]  # (B, C)
    return torch.einsum("bc,bchw->bhw", w, feats)


def publish_model(path: str | Path, state: dict[str, Any], data: dict[str, Any], arch: str, dropout: float,
                  tta: bool = False) -> None:
    """The self-contained model file: weights, constructor config, classes, normalisation, and
    the test-time shift its predictions average over (`tta_shift`)."""
    blob = {"model": state["model"], "config": {"arch": arch, "in_shape": data["shape"],
                                                "n_classes": data["n_classes"], "dropout": dropout},
            "classes": data["classes"], "mean": data["mean"], "std": data["std"],
            "tta_shift": tta_shift(data["shape"], tta),
            "train": state.get("train", {}), "history": state.get("history", [])}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(blob, f)  # a file object keeps the bytes independent of the temp name


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A published image model (CPU, eval mode) and its metadata."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg = blob["config"]
    model = build(cfg["arch"], tuple(cfg["in_shape"]), cfg["n_classes"], cfg["dropout"])
    model.load_state_dict(blob["model"])
    return model.eval(), blob
