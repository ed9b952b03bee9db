"""Depthwise convolution, ``torch.nn.Conv2d(C, C, k, stride, padding, groups=C)``:

    y[n, i, j, c] = sum_{a, b} x_pad[n, s i + a, s j + b, c] * w[a, b, 0, c]

(kernel HWIO with I = 1). Two lowerings of the same sum, chosen by jax's default backend when
the program is traced (``jtl.models.layers.on_cpu``, as the ResNets' convolutions): on CPU, k*k shifted, strided
products that XLA fuses into one loop — XLA:CPU's grouped convolution is slow (on a
(16, 56, 56, 96) input, 7x7: about 7x faster forward and 5x in the gradient, see
scripts/bench_conv_layers.py); on GPU and TPU, XLA's grouped convolution
(``feature_group_count=C``), which maps onto their native depthwise kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jtl.models.layers import on_cpu


def depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """The sum as k*k shifted, strided products (NHWC ``x``, ``kernel`` (k, k, 1, C))."""
    k = kernel.shape[0]
    n, h, w, c = x.shape
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    y = None
    for a in range(k):
        for b in range(k):
            tap = jax.lax.slice(xp, (0, a, b, 0), (n, a + stride * (ho - 1) + 1, b + stride * (wo - 1) + 1, c),
                                (1, stride, stride, 1)) * kernel[a, b, 0]
            y = tap if y is None else y + tap
    return y


def depthwise_grouped(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """The sum as XLA's grouped convolution, one group per channel."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                        feature_group_count=x.shape[-1],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """Depthwise convolution: shifted products on CPU, grouped convolution elsewhere."""
    if on_cpu():
        return depthwise_shifted(x, kernel, stride, padding)
    return depthwise_grouped(x, kernel, stride, padding)
