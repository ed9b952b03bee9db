"""PyTorch reference models for the benchmarks of :mod:`jtl.bench` (written for torch 2.x, no torchvision).

The architectures match :func:`jtl.models.create_model` exactly (same layers, same
parameter shapes and counts; ``tests/test_perf_numerics.py`` compares the counts):

- ``resnet18`` / ``resnet50``: torchvision's ResNets (7x7/2 stem, 3x3/2 max pool,
  basic / bottleneck blocks with the stride on the 3x3 convolution, "v1.5").
- ``cifar_resnet8``: He et al.'s CIFAR ResNet (3x3/1 stem of 16 channels, no pool,
  stages of 16/32/64 channels, one basic block each).
- ``vit_small_patch16_224`` (ViT-S/16), ``convnext_tiny`` (ConvNeXt-T) and their siblings:
  :mod:`jtl.bench.torch_vit_convnext`.
- :class:`AdaptationModel`: ``jtl.models.transfer.TransferModel`` with a bottleneck and its DANN discriminator.

This module imports torch (a dev extra): import it only where PyTorch runs.
"""

from __future__ import annotations

import torch
from torch import nn

from jtl.bench import torch_vit_convnext


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, width, 1, stride, 0, bias=False), nn.BatchNorm2d(width))
            if downsample else None)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = self.downsample(x) if self.downsample is not None else x
        return self.relu(y + s)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, 0, bias=False), nn.BatchNorm2d(width * 4))
            if downsample else None)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        s = self.downsample(x) if self.downsample is not None else x
        return self.relu(y + s)


class ResNet(nn.Module):
    """``forward(x) -> (logits, pooled)``; ``x`` is NCHW (optionally channels-last memory)."""

    def __init__(self, block: str, stage_sizes, num_classes: int, stage_widths=(64, 128, 256, 512),
                 stem: str = "imagenet", stem_width: int = 64):
        super().__init__()
        cls = Bottleneck if block == "bottleneck" else BasicBlock
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        cin = stem_width
        stages = []
        for i, (size, width) in enumerate(zip(stage_sizes, stage_widths)):
            blocks = []
            for j in range(size):
                stride = 2 if (i > 0 and j == 0) else 1
                cout = width * cls.expansion
                blocks.append(cls(cin, width, stride, j == 0 and (stride != 1 or cin != cout)))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.stages(x)
        pooled = torch.flatten(x.mean((2, 3)), 1)
        return (self.fc(pooled) if self.fc is not None else pooled), pooled


ARCHS = {
    "resnet18": dict(block="basic", stage_sizes=(2, 2, 2, 2)),
    "resnet50": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3)),
    "cifar_resnet8": dict(block="basic", stage_sizes=(1, 1, 1), stage_widths=(16, 32, 64), stem="cifar",
                          stem_width=16),
}


def create_model(name: str, num_classes: int | None = 1000) -> nn.Module:
    """The reference model of architecture ``name``: ``forward(x) -> (logits, pooled)``, ``num_features``."""
    if name in ARCHS:
        return ResNet(num_classes=num_classes, **ARCHS[name])
    return torch_vit_convnext.create_model(name, num_classes)


class AdaptationModel(nn.Module):
    """``jtl.models.transfer.TransferModel`` with a domain discriminator: headless backbone ->
    bottleneck ``relu(BN(Linear))`` -> classifier, and ``disc`` = ``Linear -> ReLU -> Linear ->
    ReLU -> Linear(1)`` applied behind gradient reversal by :meth:`discriminate`."""

    def __init__(self, arch: str, num_classes: int, bottleneck: int = 256, disc_hidden: int = 1024):
        super().__init__()
        self.backbone = create_model(arch, None)
        d = self.backbone.num_features
        self.bottleneck = nn.Sequential(nn.Linear(d, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU())
        self.head = nn.Linear(bottleneck, num_classes)
        self.disc = nn.Sequential(nn.Linear(bottleneck, disc_hidden), nn.ReLU(), nn.Linear(disc_hidden, disc_hidden),
                                  nn.ReLU(), nn.Linear(disc_hidden, 1))

    def forward(self, x):
        _, pooled = self.backbone(x)
        f = self.bottleneck(pooled)
        return self.head(f), f

    def discriminate(self, f, coeff: float):
        return self.disc(_Reverse.apply(f, coeff)).squeeze(-1)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.coeff * g, None


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
