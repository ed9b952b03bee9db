"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022), NHWC, with timm's exact
arithmetic and state-dict names (timm 1.0.31).

For an (N, H, W, 3) batch::

    stem:        x = LN(conv_4x4/4(x))                                  (stem_0, stem_1)
    stage i:     x = conv_2x2/2(LN(x))  for i > 0                       (stages_i/downsample_0, _1)
                 block: x = x + dp(gamma * fc2(GELU(fc1(LN(dwconv_7x7(x))))))   (stages_i/blocks_j)
    head:        f = LN(mean_hw(x)),  logits = head_fc(f)                (head_norm, head_fc)

LayerNorms normalise over channels (biased variance, eps 1e-6); ``dwconv_7x7`` is the
depthwise 7x7 convolution (padding 3, with bias); ``fc1`` widens 4x; GELU is the exact
(erf) one; ``gamma`` is LayerScale (one scale per channel); ``dp`` is stochastic depth
(a sample's whole residual branch dropped with probability ``r_b``, kept ones scaled by
``1 / (1 - r_b)``; ``r_b`` rises linearly from 0 to ``drop_path_rate`` over the blocks).
timm's small variants (``convnext_atto``) write the MLP as 1x1 convolutions
(``conv_mlp``): the same arithmetic with (O, I, 1, 1) weights.

``features["pooled"]`` (float32) is timm's pre-logits ``f`` (pooled, then ``head_norm``);
``features["stage0".."stage3"]`` are the stage outputs (N, H/4..H/32, W/4..W/32, C).
``frozen`` names top-level modules (``stem_0``, ``stem_1``, ``stages_2``, ``head_norm``):
stochastic depth is off in frozen stages (LayerNorm has no statistics).

Any input size works: like torch's strided convolutions, a row or column that does not
fill a whole patch is dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jtl.models.backbones import Family, default_torch_key, register_family
from jtl.models.depthwise import depthwise_conv2d
from jtl.models.layers import Dense, per_member_op, torch_linear_init

Dtype = Any


def trunc_normal(std: float):
    """timm's ``trunc_normal_(std)``: N(0, std^2) cut at the absolute bounds +-2."""
    return lambda key, shape, dtype=jnp.float32: std * jax.random.truncated_normal(key, -2 / std, 2 / std, shape, dtype)


def layer_norm(epsilon: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm over the last axis as ``torch.nn.LayerNorm``: two-pass biased variance,
    statistics in float32, variables ``scale``/``bias``."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False, name=name)


def drop_path(module: nn.Module, x: jax.Array, rate: float, active: bool) -> jax.Array:
    """Stochastic depth (Huang et al., 2016): keep each sample's ``x`` with probability
    ``1 - rate`` (then scaled by ``1 / (1 - rate)``), else zero it; rng stream ``"dropout"``."""
    if not active or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Per-block rates rising linearly from 0 to ``rate`` over all blocks, split by stage."""
    rates = np.linspace(0.0, rate, sum(depths)).tolist()
    return [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]


class PatchConv(nn.Module):
    """p x p convolution with stride p and bias (non-overlapping patches):
    ``y[n, i, j] = sum_{a, b, c} x[n, p i + a, p j + b, c] K[a, b, c] + bias``, computed as
    one matrix product ``(N Ho Wo, p p C) @ (p p C, O)``; rows/columns past the last whole
    patch are dropped, as torch's ``Conv2d(kernel_size=p, stride=p)`` does."""

    features: int
    patch: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, c = self.patch, x.shape[-1]
        kernel = self.param("kernel", trunc_normal(0.02), (p, p, c, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        n, h, w = x.shape[0], x.shape[1] // p, x.shape[2] // p
        x = x[:, : h * p, : w * p].reshape(n, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n * h * w, p * p * c)

        def conv(x, k, b):
            return (jnp.dot(x, k.reshape(p * p * c, -1)) + b).reshape(n, h, w, -1)

        return per_member_op(conv)(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution with bias, stride 1, zero padding k // 2:
    ``y[n, i, j, c] = sum_{a, b} x_pad[n, i + a, j + b, c] K[a, b, 0, c] + bias[c]``.

    The kernel is HWIO with I = 1 (torch's (C, 1, k, k) weight of ``groups=C``);
    :func:`jtl.models.depthwise.depthwise_conv2d` picks the lowering per platform.
    """

    kernel_size: int = 7
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", trunc_normal(0.02), (k, k, 1, c), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        p = k // 2

        def conv(x, w, b):
            return depthwise_conv2d(x, w, 1, p) + b

        return per_member_op(conv)(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class Pointwise(nn.Module):
    """A 1x1 convolution with bias (kernel (1, 1, I, O)): ``y = x K[0, 0] + bias``."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_linear_init(2), (1, 1, fan_in, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return per_member_op(lambda x, k, b: jnp.dot(x, k[0, 0]) + b)(
            x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` over the last axis, exact (erf) GELU; ``conv`` stores the two
    layers as 1x1 convolutions. Runs as 2-D matrix products over the flattened positions."""

    hidden: int
    conv: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        layer = Pointwise if self.conv else Dense
        y = x.reshape(-1, shape[-1])
        y = nn.gelu(layer(self.hidden, dtype=self.dtype, name="fc1")(y), approximate=False)
        y = layer(shape[-1], dtype=self.dtype, name="fc2")(y)
        return y.reshape(shape)


class ConvNeXtBlock(nn.Module):
    """``x + dp(gamma * mlp(LN(dwconv(x))))``."""

    kernel_size: int = 7
    mlp_ratio: float = 4.0
    conv_mlp: bool = False
    ls_init_value: float | None = 1e-6
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        y = DepthwiseConv(self.kernel_size, dtype=self.dtype, name="conv_dw")(x)
        y = layer_norm(1e-6, self.dtype, "norm")(y)
        y = Mlp(int(self.mlp_ratio * c), conv=self.conv_mlp, dtype=self.dtype, name="mlp")(y)
        if self.ls_init_value is not None:
            gamma = self.param("gamma", nn.initializers.constant(self.ls_init_value), (c,), jnp.float32)
            y = y * gamma.astype(y.dtype)
        return x.astype(self.dtype) + drop_path(self, y, self.drop_path, train)


class ConvNeXtStage(nn.Module):
    """Optional downsample (``LN`` then 2x2/2 convolution), then ``len(drop_paths)`` blocks."""

    dim: int
    drop_paths: Sequence[float]
    downsample: bool = True
    kernel_size: int = 7
    conv_mlp: bool = False
    ls_init_value: float | None = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.downsample:
            x = layer_norm(1e-6, self.dtype, "downsample_0")(x)
            x = PatchConv(self.dim, 2, dtype=self.dtype, name="downsample_1")(x)
        for j, rate in enumerate(self.drop_paths):
            x = ConvNeXtBlock(self.kernel_size, conv_mlp=self.conv_mlp, ls_init_value=self.ls_init_value,
                              drop_path=rate, dtype=self.dtype, name=f"blocks_{j}")(x, train)
        return x


class ConvNeXt(nn.Module):
    """ConvNeXt: 4x4/4 patch stem, four stages of ConvNeXt blocks, pooled LayerNorm head."""

    depths: Sequence[int]
    dims: Sequence[int]
    num_classes: int | None = 1000
    conv_mlp: bool = False
    kernel_size: int = 7
    patch_size: int = 4
    ls_init_value: float | None = 1e-6
    drop_path_rate: float = 0.0
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        return self.dims[-1]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        feats = {}
        x = PatchConv(self.dims[0], self.patch_size, dtype=self.dtype, name="stem_0")(x)
        x = layer_norm(1e-6, self.dtype, "stem_1")(x)
        rates = drop_path_rates(self.drop_path_rate, self.depths)
        for i, (dim, drop_paths) in enumerate(zip(self.dims, rates)):
            name = f"stages_{i}"
            x = ConvNeXtStage(dim, tuple(drop_paths), downsample=i > 0, kernel_size=self.kernel_size,
                              conv_mlp=self.conv_mlp, ls_init_value=self.ls_init_value, dtype=self.dtype,
                              name=name)(x, train and name not in self.frozen)
            feats[f"stage{i}"] = x
        pooled = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
        pooled = layer_norm(1e-6, pooled.dtype, "head_norm")(pooled)
        feats["pooled"] = pooled
        if self.num_classes:
            out = Dense(self.num_classes, dtype=self.dtype, name="head_fc")(pooled).astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the family
def torch_key(path: tuple[str, ...]) -> str:
    """timm's key of a variable: ``stages_1/blocks_0/mlp/fc1/kernel`` -> ``stages.1.blocks.0.mlp.fc1.weight``,
    ``head_norm`` / ``head_fc`` -> ``head.norm`` / ``head.fc``."""
    heads = {"head_norm": ("head", "norm"), "head_fc": ("head", "fc")}
    return default_torch_key(tuple(p for m in path for p in heads.get(m, (m,))))


@dataclasses.dataclass(frozen=True)
class Arch:
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    conv_mlp: bool = False


_ARCHS: dict[str, tuple[Arch, str]] = {
    "convnext_atto": (Arch((2, 2, 6, 2), (40, 80, 160, 320), conv_mlp=True),
                      "timm convnext_atto (3.7M params, 1x1-conv MLP; a small test/edge ConvNeXt)"),
    "convnext_tiny": (Arch((3, 3, 9, 3), (96, 192, 384, 768)), "ConvNeXt-T (Liu et al. 2022), timm convnext_tiny"),
    "convnext_small": (Arch((3, 3, 27, 3), (96, 192, 384, 768)), "ConvNeXt-S (Liu et al. 2022), timm convnext_small"),
    "convnext_base": (Arch((3, 3, 27, 3), (128, 256, 512, 1024)), "ConvNeXt-B (Liu et al. 2022), timm convnext_base"),
}
ARCHS = {name: dataclasses.asdict(arch) for name, (arch, _) in _ARCHS.items()}

FAMILY = register_family(Family("convnext", ConvNeXt, ARCHS, classifier="head_fc", torch_archs=tuple(ARCHS),
                                torch_key=torch_key, docs={n: doc for n, (_, doc) in _ARCHS.items()}))
