"""Inception-v3 with torchvision's exact architecture, NHWC (Szegedy et al., 2016, "Rethinking
the Inception Architecture for Computer Vision", CVPR).

Every convolution is a ``BasicConv2d``: ``relu(bn(conv(x)))``, the convolution without bias,
BatchNorm with eps 1e-3 and momentum 0.1. Kernels are square or factorised (1 x n and
n x 1, "spatial factorisation", sec. 3.2 of the paper) with torchvision's paddings. Stem::

    3x3/2 (32) -> 3x3 (32) -> 3x3 pad 1 (64) -> maxpool 3x3/2 -> 1x1 (80) -> 3x3 (192) -> maxpool 3x3/2

then ``Mixed_5b..5d`` (InceptionA: 1x1 | 1x1, 5x5 | 1x1, 3x3, 3x3 | avgpool, 1x1; at
stride 8), ``Mixed_6a`` (InceptionB: grid reduction by 3x3/2 convolutions next to a
3x3/2 max pool), ``Mixed_6b..6e`` (InceptionC: 7x7 factorised into 1x7 and 7x1, width
``c7`` = 128, 160, 160, 192), ``Mixed_7a`` (InceptionD: reduction), ``Mixed_7b..7c``
(InceptionE: expanded 1x3 | 3x1 filter banks), each concatenating its branches along
channels in torchvision's order; global average pool (2048), dropout (p = ``dropout``,
0.5), ``fc``. Pools: max pools are 3x3/2 without padding (floor); the branch pools are
3x3/1 average pools with zero padding 1 that count the padding (``y = sum_{3x3} x_pad /
9``, torch's ``count_include_pad=True``).

The auxiliary classifier ``AuxLogits`` (sec. 4 of the paper: a regulariser, not a deep
supervision aid) reads ``Mixed_6e``'s 17x17 map in train mode only: 5x5/3 average pool,
1x1 (128), 5x5 (768), global average pool, ``AuxLogits/fc``; its logits are
``features["aux_logits"]`` in train mode (never in eval mode), and a training loss may add
``w * CE(aux_logits)`` (torchvision's recipe: w = 0.4). It needs a 17x17 map, i.e. inputs
of at least 299 px in train mode (eval mode accepts 75 px and up). It exists only with a
classifier (``num_classes``) and ``aux_logits=True``; ``Family.extra_classifiers`` names it,
so the transfer layout (a headless backbone) drops it with ``fc``.

Input: torchvision's ``inception_v3(weights=IMAGENET1K_V1)`` sets ``transform_input=True``,
which maps ImageNet-normalised images (mean 0.485/0.456/0.406, std 0.229/0.224/0.225) to
``(x_raw - 0.5) / 0.5``, the [-1, 1] scaling the Google weights were trained on. jtl's
module is torchvision's with ``transform_input=False``: the caller normalises, and for
those weights should normalise with mean = std = (0.5, 0.5, 0.5).

Names follow torchvision's keys (``Mixed_6b/branch7x7_2/conv/kernel`` <->
``Mixed_6b.branch7x7_2.conv.weight``). ``frozen``: top-level modules (``Conv2d_1a_3x3``,
``Mixed_6b``, ``AuxLogits``, ``fc``, ...) whose BatchNorms run on running averages in train
mode; the dropout belongs to ``fc`` (it only feeds this module's own classifier) and is off
when ``fc`` is frozen. ``features["pooled"]`` is the (N, 2048) pooled map (before that
dropout); taps: ``stem`` (stride 8, 192), ``layer1`` (``Mixed_5d``, stride 8, 288),
``layer2`` (``Mixed_6e``, 16, 768), ``layer3`` (``Mixed_7c``, 32, 2048).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.errors import ConfigError
from jtl.models.backbones import LEAF_TO_TORCH, Family, register_family
from jtl.models.layers import BatchNorm, conv2d, per_member_op
from jtl.models.vgg import max_pool
from jtl.models.vit import trunc_normal

Dtype = Any


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d_factorised(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
    """A stride-1 ``kh x kw`` convolution with padding ``(ph, pw)`` as one matrix product over
    the taps that read data: ``[x_pad[:, di:di+Ho, dj:dj+Wo]]_taps (N Ho Wo, taps C) @
    kernel (taps C, O)`` (XLA:CPU's convolution is slow on the small maps of the 1x7 / 1x3
    banks; the products are the same, only the summation order differs)."""
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    (ph, pw) = padding
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    reads = lambda d, pad, size, out: any(pad <= d + i < pad + size for i in range(out))
    taps = [(di, dj) for di in range(kh) for dj in range(kw) if reads(di, ph, h, ho) and reads(dj, pw, w, wo)]
    cols = [jax.lax.slice(xp, (0, di, dj, 0), (n, di + ho, dj + wo, c)) for di, dj in taps]
    patches = jnp.concatenate(cols, axis=-1).reshape(n * ho * wo, len(taps) * c)
    wmat = jnp.concatenate([kernel[di, dj] for di, dj in taps], axis=0)
    return jnp.dot(patches, wmat).reshape(n, ho, wo, o)


def avg_pool(x: jax.Array, k: int, stride: int, padding: int = 0) -> jax.Array:
    """``torch.nn.functional.avg_pool2d(x, k, stride, padding)`` (floor mode, padding counted):
    the sum of the k*k strided slices of the zero-padded map, over k*k."""
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, c = xp.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    total = sum(jax.lax.slice(xp, (0, di, dj, 0), (n, di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1, c),
                              (1, stride, stride, 1)) for di in range(k) for dj in range(k))
    return total / (k * k)


def _mean_hw(x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return per_member_op(lambda x: jnp.mean(x, axis=(1, 2)))(xf)


class Conv(nn.Module):
    """``torch.nn.Conv2d(bias=False)`` with a square or factorised ``kh x kw`` kernel and
    padding ``(ph, pw)`` (torchvision's Inception init: truncated N(0, std^2))."""

    features: int
    kernel_size: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    std: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        kernel = self.param("kernel", trunc_normal(self.std), (kh, kw, x.shape[-1], self.features), jnp.float32)
        if kh == kw and ph == pw:
            op = lambda x, w: conv2d(x, w, self.stride, ph)
        elif self.stride == 1:
            op = lambda x, w: conv2d_factorised(x, w, (ph, pw))
        else:
            raise ValueError("factorised (kh != kw) convolutions take stride 1")
        return per_member_op(op)(x.astype(self.dtype), kernel.astype(self.dtype))


class BasicConv2d(nn.Module):
    """``relu(bn(conv(x)))``: ``conv`` without bias, ``bn`` BatchNorm eps 1e-3, momentum 0.1."""

    features: int
    kernel_size: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0
    std: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = Conv(self.features, _pair(self.kernel_size), self.stride, _pair(self.padding), self.std, self.dtype,
                 name="conv")(x)
        y = BatchNorm(use_running_average=not train, epsilon=1e-3, dtype=self.dtype, name="bn")(y)
        return nn.relu(y)


def _convs(module: nn.Module, x: jax.Array, train: bool, specs) -> jax.Array:
    """Run a chain of ``(name, features, kernel, stride, padding)`` BasicConv2d."""
    for name, features, k, s, p in specs:
        x = BasicConv2d(features, k, s, p, dtype=module.dtype, name=name)(x, train)
    return x


class InceptionA(nn.Module):
    """1x1 (64) | 1x1 (48), 5x5 (64) | 1x1 (64), 3x3 (96), 3x3 (96) | avgpool, 1x1 (pool_features)."""

    pool_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        c = lambda specs, inp=x: _convs(self, inp, train, specs)
        return jnp.concatenate([
            c([("branch1x1", 64, 1, 1, 0)]),
            c([("branch5x5_1", 48, 1, 1, 0), ("branch5x5_2", 64, 5, 1, 2)]),
            c([("branch3x3dbl_1", 64, 1, 1, 0), ("branch3x3dbl_2", 96, 3, 1, 1), ("branch3x3dbl_3", 96, 3, 1, 1)]),
            c([("branch_pool", self.pool_features, 1, 1, 0)], avg_pool(x, 3, 1, 1)),
        ], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction: 3x3/2 (384) | 1x1 (64), 3x3 (96), 3x3/2 (96) | maxpool 3x3/2."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        c = lambda specs: _convs(self, x, train, specs)
        return jnp.concatenate([
            c([("branch3x3", 384, 3, 2, 0)]),
            c([("branch3x3dbl_1", 64, 1, 1, 0), ("branch3x3dbl_2", 96, 3, 1, 1), ("branch3x3dbl_3", 96, 3, 2, 0)]),
            max_pool(x, 3, 2),
        ], axis=-1)


class InceptionC(nn.Module):
    """1x1 (192) | 1x1, 1x7, 7x1 (192) | 1x1, 7x1, 1x7, 7x1, 1x7 (192) | avgpool, 1x1 (192)."""

    c7: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        c, c7 = (lambda specs, inp=x: _convs(self, inp, train, specs)), self.c7
        row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
        return jnp.concatenate([
            c([("branch1x1", 192, 1, 1, 0)]),
            c([("branch7x7_1", c7, 1, 1, 0), ("branch7x7_2", c7, *row), ("branch7x7_3", 192, *col)]),
            c([("branch7x7dbl_1", c7, 1, 1, 0), ("branch7x7dbl_2", c7, *col), ("branch7x7dbl_3", c7, *row),
               ("branch7x7dbl_4", c7, *col), ("branch7x7dbl_5", 192, *row)]),
            c([("branch_pool", 192, 1, 1, 0)], avg_pool(x, 3, 1, 1)),
        ], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction: 1x1 (192), 3x3/2 (320) | 1x1, 1x7, 7x1, 3x3/2 (192) | maxpool 3x3/2."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        c = lambda specs: _convs(self, x, train, specs)
        return jnp.concatenate([
            c([("branch3x3_1", 192, 1, 1, 0), ("branch3x3_2", 320, 3, 2, 0)]),
            c([("branch7x7x3_1", 192, 1, 1, 0), ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
               ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)), ("branch7x7x3_4", 192, 3, 2, 0)]),
            max_pool(x, 3, 2),
        ], axis=-1)


class InceptionE(nn.Module):
    """1x1 (320) | 1x1 (384), [1x3 | 3x1] (2 x 384) | 1x1 (448), 3x3 (384), [1x3 | 3x1] (2 x 384)
    | avgpool, 1x1 (192)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        c = lambda specs, inp=x: _convs(self, inp, train, specs)
        b3 = c([("branch3x3_1", 384, 1, 1, 0)])
        bd = c([("branch3x3dbl_1", 448, 1, 1, 0), ("branch3x3dbl_2", 384, 3, 1, 1)])
        return jnp.concatenate([
            c([("branch1x1", 320, 1, 1, 0)]),
            c([("branch3x3_2a", 384, (1, 3), 1, (0, 1))], b3), c([("branch3x3_2b", 384, (3, 1), 1, (1, 0))], b3),
            c([("branch3x3dbl_3a", 384, (1, 3), 1, (0, 1))], bd), c([("branch3x3dbl_3b", 384, (3, 1), 1, (1, 0))], bd),
            c([("branch_pool", 192, 1, 1, 0)], avg_pool(x, 3, 1, 1)),
        ], axis=-1)


class Linear(nn.Module):
    """``torch.nn.Linear`` with torchvision's Inception init: W ~ truncated N(0, std^2), b ~
    torch's default U(+-1/sqrt(fan_in))."""

    features: int
    std: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", trunc_normal(self.std), (fan_in, self.features), jnp.float32)
        bound = fan_in ** -0.5
        bias = self.param("bias", lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -bound, bound),
                          (self.features,), jnp.float32)
        op = per_member_op(lambda x, w, b: jnp.dot(x, w) + b)
        return op(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class InceptionAux(nn.Module):
    """5x5/3 avgpool, 1x1 (128), 5x5 (768, init std 0.01), global average pool, ``fc`` (std 0.001)."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        x = avg_pool(x, 5, 3)
        x = BasicConv2d(128, 1, dtype=self.dtype, name="conv0")(x, train)
        x = BasicConv2d(768, 5, std=0.01, dtype=self.dtype, name="conv1")(x, train)
        pooled = _mean_hw(x)
        return Linear(self.num_classes, std=0.001, dtype=self.dtype, name="fc")(pooled).astype(pooled.dtype)


class Inception3(nn.Module):
    """Inception-v3 as described in the module docstring."""

    num_classes: int | None = 1000
    aux_logits: bool = True
    dropout: float = 0.5
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    num_features = 2048

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        trains = lambda name: train and name not in self.frozen
        feats = {}
        stem = [("Conv2d_1a_3x3", 32, 3, 2, 0), ("Conv2d_2a_3x3", 32, 3, 1, 0), ("Conv2d_2b_3x3", 64, 3, 1, 1), None,
                ("Conv2d_3b_1x1", 80, 1, 1, 0), ("Conv2d_4a_3x3", 192, 3, 1, 0), None]
        for spec in stem:
            if spec is None:
                x = max_pool(x, 3, 2)
            else:
                x = BasicConv2d(*spec[1:], dtype=self.dtype, name=spec[0])(x, trains(spec[0]))
        feats["stem"] = x
        blocks = [("Mixed_5b", InceptionA, (32,)), ("Mixed_5c", InceptionA, (64,)), ("Mixed_5d", InceptionA, (64,)),
                  ("Mixed_6a", InceptionB, ()), ("Mixed_6b", InceptionC, (128,)), ("Mixed_6c", InceptionC, (160,)),
                  ("Mixed_6d", InceptionC, (160,)), ("Mixed_6e", InceptionC, (192,)),
                  ("Mixed_7a", InceptionD, ()), ("Mixed_7b", InceptionE, ()), ("Mixed_7c", InceptionE, ())]
        for name, cls, args in blocks:
            x = cls(*args, dtype=self.dtype, name=name)(x, trains(name))
            if name in ("Mixed_5d", "Mixed_6e", "Mixed_7c"):
                feats[f"layer{len(feats)}"] = x
            if name == "Mixed_6e" and self.num_classes and self.aux_logits:
                aux = InceptionAux(self.num_classes, self.dtype, name="AuxLogits")
                if train:
                    if min(x.shape[1:3]) < 17:
                        raise ConfigError(f"inception_v3's auxiliary classifier needs a 17x17 Mixed_6e map in "
                                          f"train mode (inputs of at least 299 px), got {x.shape[1]}x{x.shape[2]}; "
                                          "use aux_logits=False or larger images")
                    feats["aux_logits"] = aux(x, trains("AuxLogits"))
                elif self.is_initializing():  # its variables, whatever the input size
                    aux(jnp.zeros((1, 17, 17, x.shape[-1]), x.dtype), False)
        pooled = _mean_hw(x)
        feats["pooled"] = pooled
        if self.num_classes:
            y = nn.Dropout(self.dropout, deterministic=not trains("fc"), name="dropout")(pooled)
            out = Linear(self.num_classes, dtype=self.dtype, name="fc")(y).astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the family
def torch_key(path: tuple[str, ...]) -> str:
    """torchvision's key: the module names as they are (``branch7x7_2`` keeps its underscore,
    unlike :func:`default_torch_key`'s ``name_N``): ``Mixed_6b/branch7x7_2/conv/kernel`` ->
    ``Mixed_6b.branch7x7_2.conv.weight``."""
    *modules, leaf = path
    return ".".join([*modules, LEAF_TO_TORCH.get(leaf, leaf)])


_STAGE = {"5": 1, "6": 2, "7": 3}


def layer_id(arch: str, path: str) -> int:
    """0 for the stem (``Conv2d_*``), k for stage k (``Mixed_5*``: 1, ``Mixed_6*``: 2,
    ``Mixed_7*``: 3), 4 (with the classifiers) for ``AuxLogits``."""
    m = re.match(r"Mixed_(\d)", path)
    if m:
        return _STAGE[m.group(1)]
    return 0 if path.startswith("Conv2d_") else num_layers(arch) + 1


def num_layers(arch: str) -> int:
    return 3


ARCHS = {"inception_v3": {}}
DOCS = {"inception_v3": "torchvision inception_v3 (Szegedy et al. 2016), 299 px; pooled = 2048-d; "
                        "AuxLogits in train mode"}

FAMILY = register_family(Family(
    "inception", Inception3, ARCHS, classifier="fc", extra_classifiers=("AuxLogits",), torch_archs=tuple(ARCHS),
    torch_key=torch_key, input_size=299, taps=lambda arch: ("layer1", "layer2", "layer3"), layer_id=layer_id,
    num_layers=num_layers, docs=DOCS))
