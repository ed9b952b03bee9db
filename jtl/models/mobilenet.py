"""MobileNetV3-Large with torchvision's exact architecture, NHWC (Howard et al., 2019,
"Searching for MobileNetV3").

Activations as PyTorch defines them: ``hardswish(x) = x relu6(x + 3) / 6`` and
``hardsigmoid(x) = relu6(x + 3) / 6``. Every convolution but the squeeze-excitation's is
bias-free and followed by BatchNorm (eps 1e-3, momentum 0.01), with padding
``(k - 1) // 2``. Stem: 3x3/2 convolution to 16 channels, BN, hardswish. Then 15
inverted residual blocks ``features_1``..``features_15`` (torchvision's table), each::

    y = project_1x1(SE(act(bn(depthwise_kxk/s(act(bn(expand_1x1(x))))))))   (+ x if s = 1, C_in = C_out)

(no expansion when the expanded width equals the input's; ``project`` has BN and no
activation; ``act`` is ReLU or hardswish). Squeeze-excitation (Hu et al., 2018):
``SE(x) = x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`` with 1x1 convolutions ``fc1``/``fc2``
(with bias) through ``make_divisible(C / 4, 8)`` channels, ``make_divisible(v, d) =
max(d, floor(v / d + 1/2) d)``, plus ``d`` if that lost more than 10% of ``v``.
Head: 1x1 convolution to 960 (``features_16``), BN, hardswish, global average pool,
``classifier_0`` (Linear 960 -> 1280), hardswish, dropout (p = ``dropout``, 0.2),
``classifier_3`` (the classifier sub-module); ``features["pooled"]`` is its (N, 1280) input.

Names follow torchvision's keys: ``features_4/block_2/fc1`` <-> ``features.4.block.2.fc1``,
and a conv-BN pair's ``conv``/``bn`` are its ``0``/``1``. ``frozen``: top-level modules
(``features_0``..``features_16``, ``classifier_0``) whose BatchNorms run on running
averages in train mode; the dropout belongs to ``classifier_0`` (whose output it drops)
and is off when that is frozen. Taps (the outputs before each stride-2 block, as
torchvision's detection backbones take them): ``stem`` (``features_1``, stride 2),
``layer1`` (``features_3``, 4), ``layer2`` (``features_6``, 8), ``layer3``
(``features_12``, 16), ``layer4`` (``features_16``, 32, the map that is pooled).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.models.backbones import Family, default_torch_key, register_family
from jtl.models.mobile_blocks import ConvBNAct, SqueezeExcitation, mean_hw
from jtl.models.vgg import Linear

Dtype = Any

hardswish = jax.nn.hard_swish  # x * relu6(x + 3) / 6, torch.nn.Hardswish
hardsigmoid = jax.nn.hard_sigmoid  # relu6(x + 3) / 6, torch.nn.Hardsigmoid
_ACTS = {"RE": nn.relu, "HS": hardswish, None: None}


def make_divisible(v: float, divisor: int = 8) -> int:
    """The channel count nearest ``v`` that ``divisor`` divides, at least ``divisor`` and at
    least 90% of ``v`` (the TensorFlow MobileNet rule torchvision uses)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn_act(features, kernel_size, stride=1, groups=1, act="HS", **kw):
    """torchvision's ``Conv2dNormActivation`` with MobileNetV3's BatchNorm (eps 1e-3, momentum 0.01)."""
    return ConvBNAct(features, kernel_size, stride, groups, _ACTS[act], bn_momentum=0.01, bn_epsilon=1e-3, **kw)


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise kxk/s, squeeze-excitation, project (1x1), residual."""

    kernel: int
    expanded: int
    out: int
    use_se: bool
    act: str
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        names = iter(f"block_{i}" for i in range(4))  # torchvision's ``block`` Sequential
        y = x
        if self.expanded != x.shape[-1]:
            y = _conv_bn_act(self.expanded, 1, act=self.act, dtype=self.dtype, name=next(names))(y, train)
        y = _conv_bn_act(self.expanded, self.kernel, self.stride, self.expanded, self.act, dtype=self.dtype,
                         name=next(names))(y, train)
        if self.use_se:
            y = SqueezeExcitation(make_divisible(self.expanded // 4, 8), nn.relu, hardsigmoid, self.dtype,
                                  name=next(names))(y)
        y = _conv_bn_act(self.out, 1, act=None, dtype=self.dtype, name=next(names))(y, train)
        return y + x if self.stride == 1 and x.shape[-1] == self.out else y


# torchvision's mobilenet_v3_large table: (kernel, expanded, out, SE, activation, stride).
LARGE = ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
         (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
         (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
         (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
         (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1))


class MobileNetV3(nn.Module):
    """MobileNetV3 as described in the module docstring (``blocks``: the table, as ``LARGE``)."""

    blocks: Sequence[tuple] = LARGE
    num_classes: int | None = 1000
    stem_width: int = 16
    last_channel: int = 1280
    dropout: float = 0.2
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        return self.last_channel

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        trains = lambda name: train and name not in self.frozen
        x = _conv_bn_act(self.stem_width, 3, 2, dtype=self.dtype, name="features_0")(x, trains("features_0"))
        feats, n = {}, len(self.blocks)
        for i, (k, exp, out, se, act, stride) in enumerate(self.blocks):
            if stride == 2:  # taps: the map before each stride-2 block
                feats["stem" if not feats else f"layer{len(feats)}"] = x
            name = f"features_{i + 1}"
            x = InvertedResidual(k, exp, out, se, act, stride, self.dtype, name=name)(x, trains(name))
        name = f"features_{n + 1}"
        x = _conv_bn_act(6 * self.blocks[-1][2], 1, dtype=self.dtype, name=name)(x, trains(name))
        feats[f"layer{len(feats)}"] = x
        x = Linear(self.last_channel, init="normal", dtype=self.dtype, name="classifier_0")(mean_hw(x)[:, 0, 0])
        x = nn.Dropout(self.dropout, deterministic=not trains("classifier_0"), name="classifier_2")(hardswish(x))
        pooled = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        feats["pooled"] = pooled
        if self.num_classes:
            out = Linear(self.num_classes, init="normal", dtype=self.dtype, name="classifier_3")(pooled)
            out = out.astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the family
def torch_key(path: tuple[str, ...]) -> str:
    """``features_4/block_1/conv/kernel`` -> ``features.4.block.1.0.weight`` (``bn`` is ``1``)."""
    return default_torch_key(tuple({"conv": "0", "bn": "1"}.get(m, m) for m in path))


ARCHS = {"mobilenet_v3_large": {"blocks": LARGE, "stem_width": 16, "last_channel": 1280}}
DOCS = {"mobilenet_v3_large": "torchvision mobilenet_v3_large (Howard et al. 2019); pooled = 1280-d head layer"}

FAMILY = register_family(Family("mobilenet", MobileNetV3, ARCHS, classifier="classifier_3", torch_archs=tuple(ARCHS),
                                torch_key=torch_key, docs=DOCS))
