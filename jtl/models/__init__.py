"""Models: backbone families behind one contract (:mod:`jtl.models.backbones`), heads, and the
transfer model every recipe trains (:mod:`jtl.models.transfer`)."""

# Importing a family's module registers it (jtl.models.backbones).
from jtl.models import convnext, densenet, efficientnet, inception, mobilenet, resnet, swin, vgg, vit  # noqa: F401
from jtl.models.backbones import FAMILIES, Family, arch_names, create_model, family_of, register_family
from jtl.models.layers import BatchNorm, Conv, Dense
from jtl.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "FAMILIES",
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "Conv",
    "Dense",
    "Family",
    "ResNet",
    "arch_names",
    "create_model",
    "family_of",
    "register_family",
]
