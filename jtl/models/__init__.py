"""Models: torchvision-compatible ResNets and small ResNets for small images."""

from jtl.models.layers import BatchNorm, Conv, Dense
from jtl.models.resnet import BasicBlock, Bottleneck, ResNet
from jtl.models.zoo import ARCHS, TORCHVISION_ARCHS, create_model, get_arch

__all__ = [
    "ARCHS",
    "TORCHVISION_ARCHS",
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "Conv",
    "Dense",
    "ResNet",
    "create_model",
    "get_arch",
]
