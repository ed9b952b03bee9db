"""Layers with PyTorch semantics: explicit-padding convolution and BatchNorm.

Both keep their variables as plain arrays in NHWC/HWIO layout so that weight
porting, optax partitions and orbax checkpoints see ordinary pytrees.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.custom_batching import custom_vmap

Dtype = Any

# Under jax.vmap with at most this many members, per_member_op unrolls (vectorized sweeps).
MAX_UNROLL = 64


def per_member(fn):
    """``fn`` whose vmap rule applies it member by member (``axis_size`` <= ``MAX_UNROLL``).

    XLA:CPU runs a convolution vmapped over its kernel as a grouped convolution, 3-10x
    slower than the members' convolutions one after another (scripts/bench_sweep.py),
    and rounds differently; unrolled, each member runs the very operation it runs alone.
    """
    wrapped = custom_vmap(fn)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *args):
        if axis_size > MAX_UNROLL:
            axes = tuple(jax.tree.map(lambda b: 0 if b else None, ab) for ab in in_batched)
            out = jax.vmap(fn, in_axes=axes)(*args)
        else:
            pick = lambda i: [jax.tree.map(lambda x, b: x[i] if b else x, a, ab) for a, ab in zip(args, in_batched)]
            outs = [fn(*pick(i)) for i in range(axis_size)]
            out = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return out, jax.tree.map(lambda _: True, out)

    return wrapped


def per_member_op(fn):
    """A differentiable ``fn(*arrays)`` that stays :func:`per_member` in its gradient too:
    the backward pass is ``fn``'s own VJP, unrolled over members the same way (reverse
    mode only, to any order)."""

    @jax.custom_vjp
    def op(*args):
        return per_member(fn)(*args)

    def fwd(*args):
        return op(*args), args

    def bwd(args, g):  # itself a per_member_op, so that gradients of gradients work too (WDGRL)
        return per_member_op(lambda *a: jax.vjp(fn, *a[:-1])[1](a[-1]))(*args, g)

    op.defvjp(fwd, bwd)
    return op


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
        return per_member_op(lambda x, w: conv2d(x, w, self.stride, self.padding))(x, kernel)


def conv2d_plain(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The plain XLA convolution (NHWC x HWIO -> NHWC): the reference formulation."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


# Output maps with at most this many pixels (2x2) use im2col + dot: XLA:CPU's convolution
# runs there at ~1-3 GFLOP/s in the forward and in the input gradient (docs/benchmarks.md).
SMALL_MAP_PIXELS = 4


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``conv2d_plain``'s result: on CPU by :func:`conv2d_cpu`, elsewhere XLA's convolution
    (GPU and TPU convolution libraries; jax 0.11's XLA:GPU also aborted compiling ResNet-50's
    1x1 convolutions written as matrix products, in its Triton GEMM tiling pass). The choice
    follows jax's default backend (:func:`on_cpu`)."""
    if on_cpu():
        return conv2d_cpu(x, kernel, stride, padding)
    return conv2d_plain(x, kernel, stride, padding)


def on_cpu() -> bool:
    """jax's default backend is the CPU: chosen when tracing, not with ``jax.lax.platform_dependent``,
    whose both branches in every ResNet program made tracing a ResNet-18 step about 1 s slower (2.3 s
    against 1.3 s), across the whole test suite. Both choices compute the same sums."""
    return jax.default_backend() == "cpu"


def conv2d_cpu(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``conv2d_plain``'s result, computed the fastest measured way for the shape on XLA:CPU.

    - 1x1 kernels: a (strided) slice and a 2-D matrix product ``(N*H*W, C) @ (C, O)`` (as a
      2-D product its weight gradient ``x^T g`` is 1.5-3x faster on XLA:CPU than that of the
      same contraction written over ``n, h, w``; ResNet-50 step +23%);
    - outputs of at most ``SMALL_MAP_PIXELS`` pixels: im2col (:func:`conv2d_im2col`);
    - inputs of fewer than ``FEW_INPUT_CHANNELS`` channels: XLA's convolution with a weight
      gradient tap by tap (:func:`conv2d_tap_grad`);
    - otherwise XLA's convolution.

    All are the same sum of products (only the summation order differs), so results
    match the plain formulation to float rounding (tests/test_perf_numerics.py).
    """
    k = kernel.shape[0]
    if k == 1:
        if padding:
            x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        if stride > 1:
            x = x[:, ::stride, ::stride, :]
        n, h, w, c = x.shape
        return jnp.dot(x.reshape(n * h * w, c), kernel[0, 0]).reshape(n, h, w, kernel.shape[-1])
    ho, wo = (_out_size(n, k, stride, padding) for n in x.shape[1:3])
    if ho * wo <= SMALL_MAP_PIXELS:
        return conv2d_im2col(x, kernel, stride, padding)
    if x.shape[-1] < FEW_INPUT_CHANNELS:
        return conv2d_tap_grad(x, kernel, stride, padding)
    return conv2d_plain(x, kernel, stride, padding)


# Inputs with fewer channels than this get their weight gradient tap by tap: XLA:CPU's own
# weight gradient runs there at 1-5 GFLOP/s, 2-5x slower than the taps (docs/benchmarks.md).
FEW_INPUT_CHANNELS = 32


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_tap_grad(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """XLA's convolution, with the weight gradient as one matrix product per kernel tap:
    ``dW[di, dj] = x_pad[:, di::s, dj::s, :]^T g`` over the ``N*Ho*Wo`` output positions
    (accumulated in float32); the input gradient is XLA's."""
    return conv2d_plain(x, kernel, stride, padding)


def _tap_grad_fwd(x, kernel, stride, padding):
    return conv2d_plain(x, kernel, stride, padding), (x, kernel)


def _tap_grad_bwd(stride, padding, res, g):
    x, kernel = res
    _, input_vjp = jax.vjp(lambda x: conv2d_plain(x, kernel, stride, padding), x)
    n, _, _, c = x.shape
    k, o = kernel.shape[0], kernel.shape[-1]
    ho, wo = g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    g2 = g.reshape(n * ho * wo, o)
    taps = [
        jnp.dot(jax.lax.slice(xp, (0, di, dj, 0), (n, di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1, c),
                              (1, stride, stride, 1)).reshape(n * ho * wo, c).T, g2,
                preferred_element_type=jnp.float32)
        for di in range(k) for dj in range(k)
    ]
    return input_vjp(g)[0], jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)


conv2d_tap_grad.defvjp(_tap_grad_fwd, _tap_grad_bwd)


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def conv2d_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Convolution as one matrix product: ``patches (N*Ho*Wo, taps*C) @ kernel (taps*C, O)``.

    Each kernel tap ``(di, dj)`` contributes the strided slice
    ``x_pad[:, di::s, dj::s, :]``; the slices are concatenated along channels in HWIO
    order, so the kernel is a plain reshape. Taps that only ever read padding (e.g. all
    but the centre of a 3x3 kernel on a 1x1 map) contribute exact zeros and are dropped,
    with their kernel rows.
    """
    n, h, w, c = x.shape
    k, o = kernel.shape[0], kernel.shape[-1]
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def reads_data(d: int, size: int, out: int) -> bool:  # does tap offset d ever hit a real row?
        return any(padding <= d + stride * i < padding + size for i in range(out))

    taps = [(di, dj) for di in range(k) for dj in range(k) if reads_data(di, h, ho) and reads_data(dj, w, wo)]
    cols = [
        jax.lax.slice(xp, (0, di, dj, 0), (n, di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1, c),
                      (1, stride, stride, 1))
        for di, dj in taps
    ]
    patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    wmat = jnp.concatenate([kernel[di, dj] for di, dj in taps], axis=0) if len(taps) < k * k else (
        kernel.reshape(k * k * c, o))
    y = jnp.dot(patches.reshape(n * ho * wo, len(taps) * c), wmat)
    return y.reshape(n, ho, wo, o)


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



def max_pool_3x3_s2_plain(x: jax.Array) -> jax.Array:
    """``torch.nn.MaxPool2d(3, stride=2, padding=1)`` as ``nn.max_pool`` (reference formulation)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``torch.nn.MaxPool2d(3, stride=2, padding=1)``: on CPU :func:`max_pool_3x3_s2_cpu`,
    elsewhere ``nn.max_pool`` with XLA's own gradient."""
    return max_pool_3x3_s2_cpu(x) if on_cpu() else max_pool_3x3_s2_plain(x)


@jax.custom_vjp
def max_pool_3x3_s2_cpu(x: jax.Array) -> jax.Array:
    """``torch.nn.MaxPool2d(3, stride=2, padding=1)``: padding counts as -inf.

    The forward is XLA's ``reduce_window``. The gradient goes, like PyTorch's and XLA's
    ``select_and_scatter``, to the first maximum of each window in row-major order, but is
    computed without ``select_and_scatter`` (which XLA:CPU runs ~14x slower than the
    forward): for each of the 9 taps, a mask "equals the window max and no earlier tap
    did" selects the output gradient, which is scattered back with a strided ``lax.pad``;
    XLA fuses the 9 masks and pads into one loop.
    """
    return max_pool_3x3_s2_plain(x)


def _max_pool_fwd(x):
    y = max_pool_3x3_s2_plain(x)
    return y, (x, y)


def _max_pool_bwd(res, g):
    x, y = res
    n, h, w, c = x.shape
    ho, wo = y.shape[1:3]
    neg = jnp.array(-jnp.inf, x.dtype)
    xp = jax.lax.pad(x, neg, ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0)))
    zero = jnp.zeros((), g.dtype)
    claimed = jnp.zeros(y.shape, bool)
    dxp = None
    for di in range(3):
        for dj in range(3):
            tap = jax.lax.slice(xp, (0, di, dj, 0), (n, di + 2 * (ho - 1) + 1, dj + 2 * (wo - 1) + 1, c),
                                (1, 2, 2, 1))
            hit = (tap == y) & ~claimed
            claimed = claimed | hit
            part = jnp.where(hit, g, zero)
            # Back to padded input coordinates: row di + 2*i.
            hp, wp = h + 2, w + 2
            cfg = ((0, 0, 0), (di, hp - di - 2 * (ho - 1) - 1, 1), (dj, wp - dj - 2 * (wo - 1) - 1, 1), (0, 0, 0))
            part = jax.lax.pad(part, zero, cfg)
            dxp = part if dxp is None else dxp + part
    return (dxp[:, 1:h + 1, 1:w + 1, :],)


max_pool_3x3_s2_cpu.defvjp(_max_pool_fwd, _max_pool_bwd)


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
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if not self.use_bias:
            return per_member_op(jnp.dot)(x, kernel)
        bound = 1.0 / jnp.sqrt(fan_in)
        bias = self.param(
            "bias", lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound), (self.features,), self.param_dtype
        )
        return per_member_op(lambda x, w, b: jnp.dot(x, w) + b)(x, kernel, bias.astype(self.dtype))
