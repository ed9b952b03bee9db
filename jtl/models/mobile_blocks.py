"""Blocks shared by the mobile CNN families (MobileNetV3, EfficientNet), as torchvision
defines them:

- ``ConvBNAct`` (torchvision's ``Conv2dNormActivation``): ``act(bn(conv(x)))``, a bias-free
  k x k convolution with padding ``(k - 1) // 2`` and ``groups`` 1 or the channel count
  (depthwise); ``act=None`` leaves the BatchNorm output as it is.
- ``SqueezeExcitation`` (Hu et al. 2018): ``x * gate(fc2(act(fc1(mean_hw(x)))))`` with 1x1
  convolutions ``fc1``/``fc2`` (with bias) through ``squeeze`` channels.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.models.layers import BatchNorm, per_member_op
from jtl.models.vgg import Conv2d

Dtype = Any


def mean_hw(x: jax.Array) -> jax.Array:
    """Spatial mean (N, 1, 1, C), accumulated in at least float32."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return per_member_op(lambda x: jnp.mean(x, axis=(1, 2), keepdims=True))(xf)


class ConvBNAct(nn.Module):
    """``act(bn(conv(x)))``; BatchNorm with torch's ``momentum`` and ``epsilon``."""

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    act: Callable[[jax.Array], jax.Array] | None = None
    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k = self.kernel_size
        x = Conv2d(self.features, k, self.stride, (k - 1) // 2, self.groups, use_bias=False, dtype=self.dtype,
                   name="conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                      dtype=self.dtype, name="bn")(x)
        return self.act(x) if self.act is not None else x


class SqueezeExcitation(nn.Module):
    """``x * gate(fc2(act(fc1(mean_hw(x)))))`` through ``squeeze`` channels."""

    squeeze: int
    act: Callable[[jax.Array], jax.Array] = nn.relu
    gate: Callable[[jax.Array], jax.Array] = nn.sigmoid
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = Conv2d(self.squeeze, 1, dtype=self.dtype, name="fc1")(mean_hw(x).astype(self.dtype))
        s = Conv2d(x.shape[-1], 1, dtype=self.dtype, name="fc2")(self.act(s))
        return self.gate(s) * x
