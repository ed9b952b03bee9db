"""VGG and AlexNet with torchvision's exact architectures, NHWC.

VGG (Simonyan & Zisserman, 2015, "Very Deep Convolutional Networks for Large-Scale
Image Recognition"): stacks of 3x3/1 convolutions (padding 1, with bias; ``_bn``: each
followed by BatchNorm, eps 1e-5, momentum 0.1) and ReLU, a 2x2/2 max pool closing each
stack. AlexNet as torchvision builds it, after Krizhevsky (2014, "One weird trick for
parallelizing convolutional neural networks"): convolutions 11x11/4 (padding 2, 64
channels), 5x5 (padding 2, 192), 3x3 (padding 1; 384, 256, 256), 3x3/2 max pools
without padding after the 1st, 2nd and 5th.

Both then take torch's ``AdaptiveAvgPool2d`` (7x7 for VGG, 6x6 for AlexNet: output bin
``i`` of ``n`` over an axis of length ``L`` averages rows ``floor(i L / n)`` to
``ceil((i + 1) L / n) - 1``; a smaller map is thus upsampled by repetition), flatten in
torch's (C, H, W) order, and a classifier of three Linear layers (4096, 4096,
``num_classes``) with ReLU and dropout (p = ``dropout``) after the first two (VGG) or
before them (AlexNet)::

    VGG:     classifier_0 -> ReLU -> Dropout -> classifier_3 -> ReLU -> Dropout -> classifier_6
    AlexNet: Dropout -> classifier_1 -> ReLU -> Dropout -> classifier_4 -> ReLU -> classifier_6

Module names are torchvision's state-dict indices (``features_3`` <-> ``features.3``).
The classifier sub-module is the last Linear, ``classifier_6``; ``features["pooled"]``
is its (N, 4096) input, the fc7 activation (after dropout in train mode), so with
``num_classes=None`` the backbone keeps fc6 and fc7. Taps ``layer1``..``layerK`` are
the outputs of the max pools (VGG: 5 at strides 2..32; AlexNet: 3 at strides 8, 16, 32).

``frozen``: top-level module names (``features_0``, ``classifier_0``, ...) whose
BatchNorm runs on its running averages in train mode; a dropout belongs to the layer
whose output it drops (VGG: ``classifier_0``/``classifier_3``; AlexNet: the last
convolution ``features_10`` and ``classifier_1``) and is off when that layer is frozen,
so a frozen part is a deterministic function.

:class:`Conv2d` and :class:`Linear` (torch's layers with a choice of torchvision's
initialisations) are shared with the DenseNet and MobileNetV3 families.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.errors import ConfigError
from jtl.models.backbones import Family, default_torch_key, register_family
from jtl.models.depthwise import depthwise_conv2d
from jtl.models.layers import BatchNorm, conv2d, per_member_op

Dtype = Any


# ---------------------------------------------------------------------------------- layers
def _variance_scaling(mode: str):
    return nn.initializers.variance_scaling(2.0, mode, "normal")  # kaiming_normal_(gain sqrt 2)


def _torch_uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` (NHWC input, HWIO kernel, symmetric padding; ``groups`` 1 or the
    channel count), optionally with bias. ``init``: ``"fan_out"`` / ``"fan_in"`` =
    ``kaiming_normal_`` in that mode (bias 0), ``"torch"`` = PyTorch's default
    ``U(+-1/sqrt(fan_in))`` for kernel and bias."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    use_bias: bool = True
    init: str = "fan_out"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        if self.groups not in (1, cin) or (self.groups > 1 and self.features != cin):
            raise ValueError(f"groups must be 1 or the channel count ({cin}), with as many outputs")
        shape = (k, k, cin // self.groups, self.features)
        fan_in = k * k * shape[2]
        kernel_init = _torch_uniform(fan_in) if self.init == "torch" else _variance_scaling(self.init)
        kernel = self.param("kernel", kernel_init, shape, jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.groups > 1:
            op = lambda x, w: depthwise_conv2d(x, w, self.stride, self.padding)
        else:
            op = lambda x, w: conv2d(x, w, self.stride, self.padding)
        if not self.use_bias:
            return per_member_op(op)(x, kernel)
        bias_init = _torch_uniform(fan_in) if self.init == "torch" else nn.initializers.zeros
        bias = self.param("bias", bias_init, (self.features,), jnp.float32).astype(self.dtype)
        return per_member_op(lambda x, w, b: op(x, w) + b)(x, kernel, bias)


class Linear(nn.Module):
    """``torch.nn.Linear``: ``y = x W + b``, W (in, out). ``init``: ``"torch"`` = PyTorch's
    default ``U(+-1/sqrt(fan_in))``; ``"normal"`` = N(0, 0.01^2) and bias 0 (VGG,
    MobileNetV3); ``"torch_zero_bias"``: default kernel, bias 0 (DenseNet)."""

    features: int
    init: str = "torch"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.init not in ("torch", "normal", "torch_zero_bias"):
            raise ValueError(f"unknown Linear init {self.init!r}")
        fan_in = x.shape[-1]
        kernel_init = nn.initializers.normal(0.01) if self.init == "normal" else _torch_uniform(fan_in)
        bias_init = _torch_uniform(fan_in) if self.init == "torch" else nn.initializers.zeros
        kernel = self.param("kernel", kernel_init, (fan_in, self.features), jnp.float32).astype(self.dtype)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32).astype(self.dtype)
        return per_member_op(lambda x, w, b: jnp.dot(x, w) + b)(x.astype(self.dtype), kernel, bias)


def max_pool(x: jax.Array, k: int, stride: int) -> jax.Array:
    """``torch.nn.MaxPool2d(k, stride)`` (no padding, floor mode) as the maximum of k*k
    strided slices, which keeps XLA's slow ``select_and_scatter`` out of the gradient."""
    n, h, w, c = x.shape
    if min(h, w) < k:
        raise ConfigError(f"the input shrinks to a {h}x{w} map before a {k}x{k} max pool; use a larger "
                          "data.image_size (VGG needs at least 32 px, AlexNet 63)")
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    taps = [jax.lax.slice(x, (0, di, dj, 0), (n, di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1, c),
                          (1, stride, stride, 1)) for di in range(k) for dj in range(k)]
    y = taps[0]
    for t in taps[1:]:
        y = jnp.maximum(y, t)
    return y


def adaptive_bins(length: int, out: int) -> list[tuple[int, int]]:
    """torch's ``AdaptiveAvgPool`` bins: ``[floor(i L / n), ceil((i + 1) L / n))`` for i < n."""
    return [((i * length) // out, -((-(i + 1) * length) // out)) for i in range(out)]


def adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
    """``torch.nn.AdaptiveAvgPool2d(out)`` on an NHWC map (also when it upsamples)."""

    def pool(x):
        for axis in (1, 2):
            if x.shape[axis] != out:
                x = jnp.stack([jnp.mean(jax.lax.slice_in_dim(x, s, e, axis=axis), axis=axis)
                               for s, e in adaptive_bins(x.shape[axis], out)], axis=axis)
        return x

    return per_member_op(pool)(x)


# ---------------------------------------------------------------------------------- the model
class VGG(nn.Module):
    """VGG-11/16(/BN) or AlexNet, as described in the module docstring.

    ``layers``: ``(channels, kernel, stride, padding)`` for a convolution, ``(0, k, s, 0)``
    for a k x k / s max pool; ``alexnet``: torchvision's AlexNet classifier layout.
    """

    layers: Sequence[tuple[int, int, int, int]]
    num_classes: int | None = 1000
    batch_norm: bool = False
    pool_size: int = 7
    alexnet: bool = False
    dropout: float = 0.5
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    num_features = 4096

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        feats = {}
        init = "torch" if self.alexnet else "fan_out"
        idx, last = 0, None  # torch's Sequential index; the last module with parameters

        def drop(y, owner, index):  # dropout that belongs to ``owner``'s output
            deterministic = not train or owner in self.frozen
            return nn.Dropout(self.dropout, deterministic=deterministic, name=f"classifier_{index}")(y)

        for channels, k, s, p in self.layers:
            if channels == 0:
                x = max_pool(x, k, s)
                feats[f"layer{len(feats) + 1}"] = x
                idx += 1
                continue
            last = f"features_{idx}"
            x = Conv2d(channels, k, s, p, init=init, dtype=self.dtype, name=last)(x)
            idx += 1
            if self.batch_norm:
                name = f"features_{idx}"
                x = BatchNorm(use_running_average=not train or name in self.frozen, dtype=self.dtype, name=name)(x)
                idx += 1
            x = nn.relu(x)
            idx += 1
        x = adaptive_avg_pool(x, self.pool_size)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch.flatten of NCHW
        linear = lambda n, name: Linear(n, init="torch" if self.alexnet else "normal", dtype=self.dtype, name=name)
        if self.alexnet:
            x = drop(x, last, 0)
            x = nn.relu(linear(4096, "classifier_1")(x))
            x = drop(x, "classifier_1", 3)
            x = nn.relu(linear(4096, "classifier_4")(x))
        else:
            x = drop(nn.relu(linear(4096, "classifier_0")(x)), "classifier_0", 2)
            x = drop(nn.relu(linear(4096, "classifier_3")(x)), "classifier_3", 5)
        pooled = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        feats["pooled"] = pooled
        if self.num_classes:
            out = linear(self.num_classes, "classifier_6")(pooled).astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the family
def _vgg_layers(cfg: Sequence[int | str]) -> tuple[tuple[int, int, int, int], ...]:
    return tuple((0, 2, 2, 0) if v == "M" else (v, 3, 1, 1) for v in cfg)


_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_ALEXNET = ((64, 11, 4, 2), (0, 3, 2, 0), (192, 5, 1, 2), (0, 3, 2, 0), (384, 3, 1, 1), (256, 3, 1, 1),
            (256, 3, 1, 1), (0, 3, 2, 0))

ARCHS = {
    "vgg11": {"layers": _vgg_layers(_A)},
    "vgg16": {"layers": _vgg_layers(_D)},
    "vgg16_bn": {"layers": _vgg_layers(_D), "batch_norm": True},
    "alexnet": {"layers": _ALEXNET, "pool_size": 6, "alexnet": True},
}
DOCS = {
    "vgg11": "torchvision vgg11 (VGG-A, Simonyan & Zisserman 2015); pooled = fc7 (4096)",
    "vgg16": "torchvision vgg16 (VGG-D); pooled = fc7 (4096)",
    "vgg16_bn": "torchvision vgg16_bn (VGG-D with BatchNorm); pooled = fc7 (4096)",
    "alexnet": "torchvision alexnet (Krizhevsky 2014, one weird trick); pooled = fc7 (4096)",
}

FAMILY = register_family(Family("vgg", VGG, ARCHS, classifier="classifier_6", torch_archs=tuple(ARCHS),
                                torch_key=default_torch_key, docs=DOCS))
