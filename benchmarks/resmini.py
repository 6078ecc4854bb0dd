"""ResMini: a small residual network for 1 x 28 x 28 inputs and 10 classes, in plain PyTorch.

A blue team's own architecture, written without eviltwins, for ``benchmarks/residual_scan.py``:
a stem (3x3 conv, 16 channels, batch norm, ReLU), two residual blocks (stride 2 each, 32 and 64
channels, each with two 3x3 convs with batch norm and a 1x1 projection shortcut with batch
norm), global average pooling and a linear layer. It takes normalised inputs (MNIST mean 0.1307,
std 0.3081). ``eviltwins scan --arch benchmarks.resmini:ResMini`` builds it from the repo root.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Block(nn.Module):
    """A residual block: conv-BN-ReLU-conv-BN plus a 1x1 conv-BN projection, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResMini(nn.Module):
    """Stem (16 channels) -> Block(16 -> 32, stride 2) -> Block(32 -> 64, stride 2) ->
    global average pooling -> linear to ``num_classes``. Input: ``in_channels`` x 28 x 28."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.layer1 = Block(16, 32)
        self.layer2 = Block(32, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
