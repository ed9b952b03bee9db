"""Every convolution of a train step, jtl (XLA:CPU) against PyTorch (oneDNN), layer by layer.

:func:`conv_layers` records the shape of every call to ``jtl.models.layers.conv2d`` while tracing
the model (so jtl's own dispatch is measured: 1x1 kernels as a matrix product, im2col on <= 2x2
outputs, XLA's convolution elsewhere); :func:`time_layer` times one layer's three convolutions
of a train step on random data, :func:`time_steps` both whole train steps, PyTorch in this
process (with this process's threads and OpenMP policy). torch is imported inside the functions.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from jtl.bench.cases import CASES
from jtl.bench.jtl_step import build_jtl
from jtl.bench.timing import interleaved_ms
from jtl.bench.torch_step import build_torch


def conv_layers(arch: str, size: int, batch: int) -> Counter:
    """{(input shape, kernel shape, stride, padding): count} of the model's convolutions: every call
    to ``jtl.models.layers.conv2d`` while tracing a train-mode forward of ``batch`` images."""
    import jax
    import jax.numpy as jnp

    from jtl.models import create_model, layers

    seen: Counter = Counter()
    inner = layers.conv2d

    def recording(x, kernel, stride, padding):
        seen[(tuple(x.shape), tuple(kernel.shape), stride, padding)] += 1
        return inner(x, kernel, stride, padding)

    model = create_model(arch, 10)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    layers.conv2d = recording
    try:
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables,
                       jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    finally:
        layers.conv2d = inner
    return seen


def conv_gflop(shape, kshape, stride: int, padding: int) -> float:
    """GFLOP of one convolution of NHWC input ``shape`` with HWIO kernel ``kshape``."""
    n, h, w, c = shape
    k, _, _, o = kshape
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    return 2 * n * ho * wo * o * c * k * k / 1e9


def time_layer(shape, kshape, stride: int, padding: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{part: (jtl ms, PyTorch ms)}, medians of interleaved calls, for the parts ``fwd`` (the
    convolution), ``dw`` (its weight gradient) and ``dx`` (its input gradient): jtl's are the
    pieces of ``jax.vjp(conv2d)``, each jitted alone; PyTorch's ``aten.convolution_backward`` with
    one output, channels-last tensors. Both forwards are checked to agree first."""
    import jax
    import jax.numpy as jnp
    import torch

    from jtl.models import layers

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, np.float32)
    w = (0.1 * rng.standard_normal(kshape)).astype(np.float32)
    y = jax.eval_shape(lambda a, b: layers.conv2d(a, b, stride, padding), x, w)
    g = rng.standard_normal(y.shape, np.float32)
    xj, wj, gj = map(jnp.asarray, (x, w, g))
    conv = lambda a, b: layers.conv2d(a, b, stride, padding)  # noqa: E731
    jtl_fns = {
        "fwd": jax.jit(conv),
        "dw": jax.jit(lambda a, b, c: jax.vjp(conv, a, b)[1](c)[1]),
        "dx": jax.jit(lambda a, b, c: jax.vjp(conv, a, b)[1](c)[0]),
    }
    cl = torch.channels_last
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    pad = (padding, padding)

    def torch_bwd(mask):
        return lambda: torch.ops.aten.convolution_backward(gt, xt, wt, None, (stride, stride), pad, (1, 1), False,
                                                           (0, 0), 1, mask)

    torch_fns = {"fwd": lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding),
                 "dw": torch_bwd((False, True, False)), "dx": torch_bwd((True, False, False))}
    with torch.no_grad():  # check that both compute the same forward before timing
        ref = torch_fns["fwd"]().permute(0, 2, 3, 1).numpy()
    got = np.asarray(jtl_fns["fwd"](xj, wj))
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref)), "jtl and PyTorch convolutions differ"
    out = {}
    for part in ("fwd", "dw", "dx"):
        f = jtl_fns[part]
        args = (xj, wj) if part == "fwd" else (xj, wj, gj)
        out[part] = interleaved_ms(lambda: jax.block_until_ready(f(*args)), torch_fns[part], repeats)
    return out


def time_steps(case: str, repeats: int) -> tuple[float, float]:
    """Median ms of jtl's and PyTorch's whole train step of ``CASES[case]`` (channels-last), interleaved."""
    import jax

    spec = CASES[case]
    _, step, state, batch, _, _ = build_jtl(spec)
    torch_step = build_torch(spec, True)
    state_box = [state]

    def jtl_step():
        state_box[0], m = step(state_box[0], batch)
        jax.block_until_ready(m)

    return interleaved_ms(jtl_step, torch_step, repeats)
