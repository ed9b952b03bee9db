"""EfficientNet-B0 with torchvision's and timm's exact arithmetic, NHWC (Tan & Le, 2019,
"EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML).

Every convolution is bias-free and followed by BatchNorm (eps 1e-5, momentum 0.1 in both
torchvision's ``efficientnet_b0`` and timm's ``efficientnet_b0``), with symmetric padding
``(k - 1) // 2`` (timm's non-``tf_`` models; the ``tf_`` ports' TF "same" padding is not
implemented). Activations: ``silu(x) = x sigmoid(x)`` (swish). Stem: 3x3/2 convolution to
32 channels, BN, SiLU. Then seven stages of MBConv blocks (Sandler et al. 2018's inverted
residual with squeeze-excitation), from the paper's Table 1::

    stage   expand  kernel  stride  channels  blocks
      1       1       3       1        16        1
      2       6       3       2        24        2
      3       6       5       2        40        2
      4       6       3       2        80        3
      5       6       5       1       112        3
      6       6       5       2       192        4
      7       6       3       1       320        1

    MBConv(x) = project(SE(silu(bn(dwconv_kxk/s(silu(bn(expand_1x1(x))))))))   (+ x if s = 1, C_in = C_out)
    SE(y)     = y * sigmoid(fc2(silu(fc1(mean_hw(y)))))   through max(1, C_in // 4) channels

(no ``expand`` when the ratio is 1; ``project`` is 1x1 with BN and no activation; ``fc1``/
``fc2`` are 1x1 convolutions with bias). In train mode the residual branch is dropped per
sample (stochastic depth, Huang et al. 2016: ``x + b(x) m / (1 - p)``, ``m ~ Bernoulli(1 -
p)`` for each sample) with ``p`` rising linearly over the 16 blocks, ``p_i =
drop_path_rate * i / 16`` (i = 0..15), from the ``"dropout"`` stream; torchvision's default
rate is 0.2 and timm's 0 (its recipe trains with 0.2), jtl's is 0. Head: 1x1 convolution
to 1280, BN, SiLU, global average pool, dropout (p = ``dropout``, 0.2: torchvision's default
and timm's training recipe; ``timm.create_model``'s default is 0), Linear.

One module, two state-dict layouts (two registered families; the arithmetic and the
published weights are the same: torchvision's ``efficientnet_b0_rwightman-3dd342df.pth``
is timm's ``efficientnet_b0_ra-3dd342df.pth`` renamed). Flax names follow torchvision's
indices: ``features_0`` (stem), ``features_S_J`` (block J of stage S), ``features_8``
(head convolution), ``classifier_1`` (the classifier sub-module); inside a block
``expand``/``dwconv``/``se``/``project``, each convolution-BN pair as ``conv``/``bn``::

    jtl                            torchvision                  timm
    features_0/conv                features.0.0                 conv_stem (bn: bn1)
    features_3_1/expand/conv       features.3.1.block.0.0       blocks.2.1.conv_pw (bn: bn1)
    features_3_1/dwconv/conv       features.3.1.block.1.0       blocks.2.1.conv_dw (bn: bn2)
    features_3_1/se/fc1            features.3.1.block.2.fc1     blocks.2.1.se.conv_reduce
    features_3_1/project/conv      features.3.1.block.3.0       blocks.2.1.conv_pwl (bn: bn3)
    features_8/conv                features.8.0                 conv_head (bn: bn2)
    classifier_1                   classifier.1                 classifier

(stage 1, without ``expand``: torchvision's indices shift down by one; timm's block is a
``DepthwiseSeparableConv``: ``conv_dw``/``bn1``, ``se``, ``conv_pw``/``bn2``).

``frozen``: top-level modules (``features_0``, ``features_3_1``, ``features_8``,
``classifier_1``) whose BatchNorms run on running averages in train mode and whose
residual branch is never dropped; the classifier's dropout belongs to ``classifier_1``.
``features["pooled"]`` is the (N, 1280) pooled map (before that dropout, which only feeds
this module's own classifier). Features: ``stem`` (stride 2), ``layer1``..``layer7`` (the
stage outputs, the taps; strides 2, 4, 8, 16, 16, 32, 32), ``head`` (``features_8``, the
map that is pooled).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.models.backbones import LEAF_TO_TORCH, Family, register_family
from jtl.models.layers import per_member_op
from jtl.models.mobile_blocks import ConvBNAct, SqueezeExcitation, mean_hw
from jtl.models.mobilenet import make_divisible

Dtype = Any

# (expand ratio, kernel, stride, output channels, blocks) per stage: the paper's Table 1.
B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
      (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def _conv_bn_act(features, kernel_size, stride=1, groups=1, act=True, **kw):
    """``silu(bn(conv(x)))`` (``act=False``: ``bn(conv(x))``), torch's BatchNorm defaults."""
    return ConvBNAct(features, kernel_size, stride, groups, nn.silu if act else None, **kw)


class MBConv(nn.Module):
    """Expand (1x1), depthwise kxk/s, squeeze-excitation, project (1x1), residual with
    stochastic depth (rate ``drop_path``)."""

    expand_ratio: int
    kernel: int
    stride: int
    out: int
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cin = x.shape[-1]
        mid = make_divisible(cin * self.expand_ratio, 8)
        y = x
        if mid != cin:
            y = _conv_bn_act(mid, 1, dtype=self.dtype, name="expand")(y, train)
        y = _conv_bn_act(mid, self.kernel, self.stride, mid, dtype=self.dtype, name="dwconv")(y, train)
        y = SqueezeExcitation(max(1, cin // 4), nn.silu, nn.sigmoid, self.dtype, name="se")(y)
        y = _conv_bn_act(self.out, 1, act=False, dtype=self.dtype, name="project")(y, train)
        if self.stride != 1 or cin != self.out:
            return y
        y = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train, name="drop_path")(y)
        return y + x


class Linear(nn.Module):
    """``torch.nn.Linear`` with torchvision's EfficientNet init: W ~ U(+-1/sqrt(out)), b = 0."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bound = self.features ** -0.5
        kernel = self.param("kernel", lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -bound, bound),
                            (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        op = per_member_op(lambda x, w, b: jnp.dot(x, w) + b)
        return op(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class EfficientNet(nn.Module):
    """EfficientNet as described in the module docstring (``stages``: the table, as ``B0``)."""

    stages: Sequence[tuple[int, int, int, int, int]] = B0
    num_classes: int | None = 1000
    stem_width: int = 32
    head_width: int = 1280
    dropout: float = 0.2
    drop_path_rate: float = 0.0
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        return self.head_width

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        trains = lambda name: train and name not in self.frozen
        x = _conv_bn_act(self.stem_width, 3, 2, dtype=self.dtype, name="features_0")(x, trains("features_0"))
        feats = {"stem": x}
        total, i = sum(s[-1] for s in self.stages), 0
        for s, (expand, k, stride, out, blocks) in enumerate(self.stages, start=1):
            for j in range(blocks):
                name = f"features_{s}_{j}"
                x = MBConv(expand, k, stride if j == 0 else 1, out, self.drop_path_rate * i / total, self.dtype,
                           name=name)(x, trains(name))
                i += 1
            feats[f"layer{s}"] = x
        name = f"features_{len(self.stages) + 1}"
        x = _conv_bn_act(self.head_width, 1, dtype=self.dtype, name=name)(x, trains(name))
        feats["head"] = x
        pooled = mean_hw(x)[:, 0, 0]
        feats["pooled"] = pooled
        if self.num_classes:
            y = nn.Dropout(self.dropout, deterministic=not trains("classifier_1"), name="classifier_0")(pooled)
            out = Linear(self.num_classes, self.dtype, name="classifier_1")(y).astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the families
_NO_EXPAND = {s for s, (expand, *_) in enumerate(B0, start=1) if expand == 1}  # stage 1 in every B-variant
_HEAD = len(B0) + 1
_TV_BLOCK = {"expand": 0, "dwconv": 1, "se": 2, "project": 3}
_TIMM_BLOCK = {  # (stage without expansion: DepthwiseSeparableConv, with: InvertedResidual) names
    False: {("dwconv", "conv"): "conv_dw", ("dwconv", "bn"): "bn1", ("project", "conv"): "conv_pw",
            ("project", "bn"): "bn2"},
    True: {("expand", "conv"): "conv_pw", ("expand", "bn"): "bn1", ("dwconv", "conv"): "conv_dw",
           ("dwconv", "bn"): "bn2", ("project", "conv"): "conv_pwl", ("project", "bn"): "bn3"},
}


def _split(path: tuple[str, ...]):
    *modules, leaf = path
    m = re.fullmatch(r"features_(\d+)(?:_(\d+))?", modules[0])
    return m, modules, LEAF_TO_TORCH.get(leaf, leaf)


def torchvision_key(path: tuple[str, ...]) -> str:
    """``features_3_1/dwconv/conv/kernel`` -> ``features.3.1.block.1.0.weight`` (module docstring)."""
    m, modules, leaf = _split(path)
    pair = {"conv": "0", "bn": "1"}
    if m is None:  # classifier_1
        return ".".join([*modules, leaf]).replace("_", ".")
    if m.group(2) is None:  # stem, head convolution
        return f"features.{m.group(1)}.{pair[modules[1]]}.{leaf}"
    stage = int(m.group(1))
    idx = _TV_BLOCK[modules[1]] - (stage in _NO_EXPAND)
    rest = [pair.get(n, n) for n in modules[2:]]
    return ".".join([f"features.{stage}.{m.group(2)}.block.{idx}", *rest, leaf])


def timm_key(path: tuple[str, ...]) -> str:
    """``features_3_1/dwconv/conv/kernel`` -> ``blocks.2.1.conv_dw.weight`` (module docstring)."""
    m, modules, leaf = _split(path)
    if m is None:
        return f"classifier.{leaf}"
    if m.group(2) is None:
        head = int(m.group(1)) == _HEAD
        return {"conv": "conv_head" if head else "conv_stem", "bn": "bn2" if head else "bn1"}[modules[1]] + "." + leaf
    stage = int(m.group(1))
    if modules[1] == "se":
        name = "se." + {"fc1": "conv_reduce", "fc2": "conv_expand"}[modules[2]]
    else:
        name = _TIMM_BLOCK[stage not in _NO_EXPAND][tuple(modules[1:3])]
    return f"blocks.{stage - 1}.{m.group(2)}.{name}.{leaf}"


def layer_id(arch: str, path: str) -> int:
    """0 for the stem, s for stage s (``features_s_j``), 8 (with the classifier) for the
    head convolution ``features_8``."""
    m = re.match(r"features_(\d+)", path)
    return int(m.group(1)) if m else num_layers(arch) + 1


def num_layers(arch: str) -> int:
    return len(B0)


_TAPS = tuple(f"layer{s}" for s in range(1, len(B0) + 1))
_COMMON = dict(classifier="classifier_1", taps=lambda arch: _TAPS, layer_id=layer_id, num_layers=num_layers)

TORCHVISION_ARCHS = {"efficientnet_b0": {"stages": B0}}
TIMM_ARCHS = {"timm_efficientnet_b0": {"stages": B0}}

FAMILY = register_family(Family(
    "efficientnet", EfficientNet, TORCHVISION_ARCHS, torch_archs=tuple(TORCHVISION_ARCHS), torch_key=torchvision_key,
    docs={"efficientnet_b0": "torchvision efficientnet_b0 (Tan & Le 2019); pooled = 1280-d"}, **_COMMON))
TIMM_FAMILY = register_family(Family(
    "timm_efficientnet", EfficientNet, TIMM_ARCHS, torch_archs=tuple(TIMM_ARCHS), torch_key=timm_key,
    docs={"timm_efficientnet_b0": "timm efficientnet_b0 (same network, timm's key names); pooled = 1280-d"},
    **_COMMON))
