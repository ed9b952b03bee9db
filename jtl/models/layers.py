"""Layers with PyTorch semantics: explicit-padding convolution and BatchNorm.

Both keep their variables as plain arrays in NHWC/HWIO layout so that weight
porting, optax partitions and orbax checkpoints see ordinary pytrees.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", nonlinearity="relu"):
# std = sqrt(2 / (k*k*out_channels)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
    """2-D convolution without bias, NHWC input, HWIO kernel, symmetric explicit padding.

    ``y[n, i, j, o] = sum_{di, dj, c} x_pad[n, s*i + di, s*j + dj, c] * kernel[di, dj, c, o]``
    with ``x_pad`` the input zero-padded by ``padding`` on each spatial side, as
    ``torch.nn.Conv2d(bias=False)``.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", conv_kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return conv2d(x, kernel, self.stride, self.padding)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The plain XLA convolution (NHWC x HWIO -> NHWC)."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with ``torch.nn.BatchNorm2d``'s exact semantics.

    Train mode normalises with the batch statistics ``mu = mean(x)``,
    ``s2 = mean((x - mu)^2)``: ``y = (x - mu) / sqrt(s2 + eps) * scale + bias`` and
    updates ``mean <- (1 - m) mean + m mu`` and ``var <- (1 - m) var + m s2 n / (n - 1)``
    (PyTorch keeps the *unbiased* variance; ``n`` = elements per channel, ``m`` = 0.1).
    With ``use_running_average`` it normalises with ``mean``/``var`` and changes nothing.
    Statistics are computed in float32 (float64 for float64 inputs) whatever the compute dtype. Under ``jax.jit``
    over a sharded batch the mean is over the global batch.
    """

    use_running_average: bool = False
    momentum: float = 0.1  # PyTorch convention: weight of the new batch statistic.
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        axes = tuple(range(x.ndim - 1))
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        if use_ra:
            mean, var = ra_mean.value.astype(stat_dtype), ra_var.value.astype(stat_dtype)
        else:
            xf = x.astype(stat_dtype)
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
        mul = scale.astype(stat_dtype) * jax.lax.rsqrt(var + self.epsilon)
        add = bias.astype(stat_dtype) - mean * mul
        return (x.astype(stat_dtype) * mul + add).astype(self.dtype)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``torch.nn.MaxPool2d(3, stride=2, padding=1)``: padding counts as -inf."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def torch_linear_init(fan_in_axis: int = 0):
    """``torch.nn.Linear``'s default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / jnp.sqrt(shape[fan_in_axis])
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dense(nn.Module):
    """Fully connected layer initialised like ``torch.nn.Linear``: ``y = x W + b``."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_linear_init(0), (fan_in, self.features), self.param_dtype)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bound = 1.0 / jnp.sqrt(fan_in)
            bias = self.param(
                "bias", lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound), (self.features,), self.param_dtype
            )
            y = y + bias.astype(self.dtype)
        return y
