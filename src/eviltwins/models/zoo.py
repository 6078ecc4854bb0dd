"""Architectures: a small CNN, the classic Keras MNIST CNN (``cnn-heavy``), a small batch-norm
residual network (``resnet-small``), CIFAR-style ResNet-18, VGG-11/16 (with batch norm) and torchvision's ImageNet ResNet-18/101. Each factory
takes (in_channels, num_classes, input_size)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from eviltwins.errors import ParamError
from eviltwins.models.base import MODELS


class SmallCNN(nn.Module):
    """Two conv blocks (3x3 conv, ReLU, 2x2 max-pool; 32 and 64 channels) and a 128-unit dense
    layer: >= 98% on MNIST in 2 epochs at about 4M multiply-adds per 28x28 image.
    Feature layer (TrojanNN / ABS default): ``features.conv2`` (pre-ReLU)."""

    feature_layer = "features.conv2"
    arch, min_side = "cnn", 4

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: Sequence[int],
        width: int = 32,
        hidden: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        h, w = input_size
        m = self.min_side
        if h < m or w < m:
            raise ParamError(f"{self.arch} needs inputs of at least {m}x{m} pixels; got {h}x{w}")
        c1, c2 = width, 2 * width
        self.features = nn.Sequential(OrderedDict(self._conv_layers(in_channels, c1, c2)))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(c2 * self._map_side(h) * self._map_side(w), hidden)),
                    ("relu3", nn.ReLU()),
                    ("dropout", nn.Dropout(dropout)),
                    ("fc2", nn.Linear(hidden, num_classes)),
                ]
            )
        )

    @staticmethod
    def _conv_layers(cin: int, c1: int, c2: int) -> list[tuple[str, nn.Module]]:
        return [
            ("conv1", nn.Conv2d(cin, c1, 3, padding=1)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(c1, c2, 3, padding=1)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
        ]

    @staticmethod
    def _map_side(n: int) -> int:
        """Side of the last feature map for an input side ``n``."""
        return n // 4

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class HeavyCNN(SmallCNN):
    """The classic Keras MNIST CNN: two *unpadded* 3x3 convolutions of 32 and 64 channels
    (ReLU after each), one 2x2 max-pool, a dense layer of ``hidden`` (128) units on the
    flattened map (64 x 12 x 12 = 9,216 wide on 28x28), ReLU, dropout (0.5 from the
    ``cnn-heavy`` factory, as in Keras), the class layer. The second convolution runs at full
    resolution: about 12M multiply-adds per 28x28 image, three times the small CNN. Feature
    layer (TrojanNN / ABS default): ``features.conv2`` (pre-ReLU)."""

    arch, min_side = "cnn-heavy", 6

    @staticmethod
    def _conv_layers(cin: int, c1: int, c2: int) -> list[tuple[str, nn.Module]]:
        return [
            ("conv1", nn.Conv2d(cin, c1, 3)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c2, 3)),
            ("relu2", nn.ReLU()),
            ("pool", nn.MaxPool2d(2)),
        ]

    @staticmethod
    def _map_side(n: int) -> int:
        return (n - 4) // 2


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs as in the IMC experiments: 3x3 stride-1 stem, no max-pool,
    stages of (64, 128, 256, 512) channels, global average pool. Feature layer: ``layer4``."""

    feature_layer = "layer4"

    def __init__(
        self, in_channels: int, num_classes: int, input_size: Sequence[int], width: int = 64
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout, stride = width * mult, (1 if i == 0 else 2)
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class SmallResNet(nn.Module):
    """A small batch-norm residual network for 28x28 / 32x32 images: a 3x3 stem (``width``
    channels, batch norm, ReLU), two residual blocks (:class:`BasicBlock`, stride 2, doubling
    the channels), global average pooling and one linear layer; about 6M multiply-adds per
    28x28 image at width 16, close to the small CNN. Feature layer: ``layer2``."""

    feature_layer = "layer2"

    def __init__(
        self, in_channels: int, num_classes: int, input_size: Sequence[int], width: int = 16
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 256:
            raise ParamError(f"resnet-small width must be an int in [1, 256]; got {width}")
        if min(input_size) < 4:
            raise ParamError(f"resnet-small needs inputs of at least 4x4 pixels; got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, 2 * width, 2)
        self.layer2 = BasicBlock(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(x))), 1))


VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    """CIFAR-style VGG with batch norm; pooling stops once the map is 1 pixel wide (so 28x28
    inputs work too), then a global average pool and one linear layer. ``width`` is the first
    stage's channels (64 as in VGG; the later stages scale with it, e.g. 16 for a network a
    CPU trains in minutes). Feature layer: ``features`` (the last ReLU output)."""

    feature_layer = "features"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: Sequence[int],
        depth: str = "vgg11",
        width: int = 64,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1024:
            raise ParamError(f"vgg width must be an int in [1, 1024]; got {width}")
        layers: list[nn.Module] = []
        cin, size = in_channels, min(input_size)
        for v in VGG_CFG[depth]:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            cout = max(1, int(v) * width // 64)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _torchvision_resnet(
    arch: str, in_channels: int, num_classes: int, pretrained: bool
) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, arch)
    if pretrained:  # downloads ImageNet weights through torchvision (needs network access)
        net = builder(weights="DEFAULT")
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    else:
        net = builder(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.feature_layer = "layer4"
    return net


@MODELS.register("cnn")
def cnn(
    in_channels: int,
    num_classes: int,
    input_size: Sequence[int],
    width: int = 32,
    hidden: int = 128,
    dropout: float = 0.25,
) -> nn.Module:
    """The small CNN for 28x28 / 32x32 grey or colour images."""
    return SmallCNN(in_channels, num_classes, input_size, width, hidden, dropout)


@MODELS.register("cnn-heavy")
def cnn_heavy(
    in_channels: int,
    num_classes: int,
    input_size: Sequence[int],
    width: int = 32,
    hidden: int = 128,
    dropout: float = 0.5,
) -> nn.Module:
    """The classic Keras MNIST CNN (two unpadded 3x3 convs, 9,216-wide dense layer on 28x28)."""
    return HeavyCNN(in_channels, num_classes, input_size, width, hidden, dropout)


@MODELS.register("resnet18")
def resnet18(
    in_channels: int, num_classes: int, input_size: Sequence[int], width: int = 64
) -> nn.Module:
    """CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool) for 32x32 inputs."""
    return CifarResNet18(in_channels, num_classes, input_size, width)


@MODELS.register("resnet-small")
def resnet_small(
    in_channels: int, num_classes: int, input_size: Sequence[int], width: int = 16
) -> nn.Module:
    """A small batch-norm residual network (stem, two residual blocks, global pooling)."""
    return SmallResNet(in_channels, num_classes, input_size, width)


@MODELS.register("vgg11")
def vgg11(
    in_channels: int, num_classes: int, input_size: Sequence[int], width: int = 64
) -> nn.Module:
    """VGG-11 with batch norm, CIFAR style."""
    return VGG(in_channels, num_classes, input_size, "vgg11", width)


@MODELS.register("vgg16")
def vgg16(
    in_channels: int, num_classes: int, input_size: Sequence[int], width: int = 64
) -> nn.Module:
    """VGG-16 with batch norm, CIFAR style."""
    return VGG(in_channels, num_classes, input_size, "vgg16", width)


@MODELS.register("resnet18-imagenet")
def resnet18_imagenet(
    in_channels: int, num_classes: int, input_size: Sequence[int], pretrained: bool = False
) -> nn.Module:
    """torchvision's ResNet-18 for 224x224 inputs (7x7 stem, max-pool)."""
    return _torchvision_resnet("resnet18", in_channels, num_classes, pretrained)


@MODELS.register("resnet101")
def resnet101(
    in_channels: int, num_classes: int, input_size: Sequence[int], pretrained: bool = False
) -> nn.Module:
    """torchvision's ResNet-101 for 224x224 inputs (ISIC 2018 in the paper)."""
    return _torchvision_resnet("resnet101", in_channels, num_classes, pretrained)
