"""DenseNet-BC with torchvision's exact architecture, NHWC (Huang et al., 2017,
"Densely Connected Convolutional Networks").

Stem: 7x7/2 convolution (padding 3, no bias), BatchNorm, ReLU, 3x3/2 max pool (padding 1).
Dense block: layer ``l`` sees the concatenation ``[x_0, ..., x_{l-1}]`` of the block's
input and all earlier layers' outputs (channels last) and adds ``k`` = ``growth_rate``
channels, in pre-activation order::

    x_l = conv2_3x3(relu(norm2(conv1_1x1(relu(norm1([x_0, ..., x_{l-1}]))))))

(``conv1`` has ``bn_size * k`` outputs; no biases). A transition halves the channels and
the resolution: ``avgpool_2x2/2(conv_1x1(relu(norm(x))))``. After the last block:
``norm5``, ReLU, global average pool, ``classifier`` (Linear). BatchNorm: eps 1e-5,
momentum 0.1. torchvision's ``memory_efficient`` (checkpointing) changes nothing numerically.

Module names are torchvision's keys without the ``features.`` prefix (``conv0``,
``norm0``, ``denseblock1/denselayer1/norm1``, ``transition1/conv``, ``norm5``), so the
top-level modules, the units of ``frozen``, are the stem layers, the blocks, the
transitions and ``norm5``; a frozen one runs its BatchNorms on running averages in train
mode (and its dense layers' dropout, ``drop_rate``, is off). Features: ``stem`` (after the
max pool, stride 4), ``layer1``..``layer3`` (dense block outputs, strides 4, 8, 16),
``layer4`` (``relu(norm5(block 4))``, stride 32, the map that is pooled) and ``pooled``.

torchvision's IMAGENET1K_V1 file keeps pre-0.3 keys (``denselayer1.norm.1.weight``
for ``denselayer1.norm1.weight``); :func:`rename_legacy_keys` maps them.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.models.backbones import Family, default_torch_key, register_family
from jtl.models.layers import BatchNorm, max_pool_3x3_s2, per_member_op
from jtl.models.vgg import Conv2d, Linear

Dtype = Any


def _conv(features, k, stride=1, padding=0, **kw):
    # torchvision's DenseNet: kaiming_normal_ (fan_in, gain sqrt 2), no bias.
    return Conv2d(features, k, stride, padding, use_bias=False, init="fan_in", **kw)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (``bn_size * growth_rate``) then BN-ReLU-3x3 conv (``growth_rate``)."""

    growth_rate: int
    bn_size: int
    drop_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        y = _conv(self.bn_size * self.growth_rate, 1, dtype=self.dtype, name="conv1")(nn.relu(bn("norm1")(x)))
        y = _conv(self.growth_rate, 3, 1, 1, dtype=self.dtype, name="conv2")(nn.relu(bn("norm2")(y)))
        return nn.Dropout(self.drop_rate, deterministic=not train)(y)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns the concatenation of the input and every output."""

    num_layers: int
    growth_rate: int
    bn_size: int
    drop_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_layers):
            y = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, self.dtype, name=f"denselayer{i + 1}")(
                x, train)
            x = jnp.concatenate([x, y], axis=-1)
        return x


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """``torch.nn.AvgPool2d(2, 2)`` (floor mode): the mean of each 2x2 block."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return per_member_op(lambda x: jnp.mean(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4)))(x)


class Transition(nn.Module):
    """``avgpool_2x2(conv_1x1(relu(norm(x))))`` to ``features`` channels."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="norm")(x))
        return avg_pool_2x2(_conv(self.features, 1, dtype=self.dtype, name="conv")(x))


class DenseNet(nn.Module):
    """A DenseNet-BC as described in the module docstring."""

    num_classes: int | None = 1000
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        c = self.num_init_features
        for i, n in enumerate(self.block_config):
            c += n * self.growth_rate
            if i < len(self.block_config) - 1:
                c //= 2
        return c

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        trains = lambda name: train and name not in self.frozen
        feats = {}
        x = _conv(self.num_init_features, 7, 2, 3, dtype=self.dtype, name="conv0")(x)
        x = nn.relu(BatchNorm(use_running_average=not trains("norm0"), dtype=self.dtype, name="norm0")(x))
        x = max_pool_3x3_s2(x)
        feats["stem"] = x
        for i, n in enumerate(self.block_config):
            name = f"denseblock{i + 1}"
            x = DenseBlock(n, self.growth_rate, self.bn_size, self.drop_rate, self.dtype, name=name)(x, trains(name))
            if i < len(self.block_config) - 1:
                feats[f"layer{i + 1}"] = x
                name = f"transition{i + 1}"
                x = Transition(x.shape[-1] // 2, self.dtype, name=name)(x, trains(name))
        x = nn.relu(BatchNorm(use_running_average=not trains("norm5"), dtype=self.dtype, name="norm5")(x))
        feats[f"layer{len(self.block_config)}"] = x
        pooled = per_member_op(lambda x: jnp.mean(x, axis=(1, 2)))(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
        feats["pooled"] = pooled
        if self.num_classes:
            # torchvision: default Linear kernel init, bias 0.
            out = Linear(self.num_classes, init="torch_zero_bias", dtype=self.dtype, name="classifier")(pooled)
            out = out.astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the family
def torch_key(path: tuple[str, ...]) -> str:
    """``denseblock1/denselayer2/conv1/kernel`` -> ``features.denseblock1.denselayer2.conv1.weight``."""
    key = default_torch_key(path)
    return key if path[0] == "classifier" else "features." + key


_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                     r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def rename_legacy_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision's published DenseNet files name ``denselayerN.norm1`` ``denselayerN.norm.1``
    (and ``conv.2``, ...); return the state dict with today's names (others unchanged)."""
    out = {}
    for key, value in state_dict.items():
        m = _LEGACY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


ARCHS = {"densenet121": {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64}}
DOCS = {"densenet121": "torchvision densenet121 (Huang et al. 2017); pooled = relu(norm5) average (1024)"}

FAMILY = register_family(Family("densenet", DenseNet, ARCHS, classifier="classifier", torch_archs=tuple(ARCHS),
                                torch_key=torch_key, rename_keys=rename_legacy_keys, docs=DOCS))
