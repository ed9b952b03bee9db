"""Every convolution of a train step, jtl (XLA:CPU) against PyTorch (oneDNN), layer by layer.

    .venv/bin/python scripts/bench_conv_layers.py [--case resnet18_64] [--repeats 7]
    (figures: docs/benchmarks.md, "Train step vs PyTorch")

For a case of ``scripts/bench_train_step.py`` the script records the shape of every call to
``jtl.models.layers.conv2d`` while tracing the model (so jtl's own dispatch is measured: 1x1
kernels as a matrix product, im2col on <= 2x2 outputs, XLA's convolution elsewhere), then
times, per distinct layer, the three convolutions of a train step on random data:

- ``fwd``: the convolution; ``dw``: its weight gradient; ``dx``: its input gradient (jtl: the
  pieces of ``jax.vjp(conv2d)``, each jitted alone; PyTorch: ``aten.convolution_backward``
  with one output, channels-last tensors, all cores, OpenMP wait policy passive).

Rounds alternate jtl / PyTorch; medians. One JSON line per layer (milliseconds and GFLOP/s,
``count`` = how many layers of the model have that shape), then a total line weighted by
``count`` (a train step needs no input gradient of the first layer: ``train_conv_ms`` leaves it
out). With ``--with-step`` the last line also times both frameworks' whole train step
(``scripts/bench_train_step.py``'s, PyTorch in this process with the same threads), and splits
each into convolutions and the rest; ``step_with_torch_convs_ms`` = PyTorch's convolutions +
jtl's rest, the step jtl would have with oneDNN's convolution kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch's OpenMP starts

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {"resnet18_64": ("resnet18", 64, 64), "resnet18_128": ("resnet18", 128, 32),
         "resnet50_128": ("resnet50", 128, 16), "cifar8_32": ("cifar_resnet8", 32, 128),
         "dann_32": ("cifar_resnet8", 32, 256)}  # the DANN step's backbone sees 128 source + 128 target


def conv_layers(arch: str, size: int, batch: int) -> Counter:
    """{(input shape, kernel shape, stride, padding): count} of the model's convolutions."""
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


def interleaved_ms(fa, fb, repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``fa`` and ``fb`` over ``repeats`` alternating calls (after one
    warm-up call each), so that load on a shared machine hits both alike."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        for f, times in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ta)), 1e3 * float(np.median(tb))


def time_layer(shape, kshape, stride, padding, repeats: int) -> dict:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="resnet18_64", choices=sorted(CASES))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--with-step", action="store_true", help="also time both whole train steps")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    arch, size, batch = CASES[a.case]
    totals = {part: [0.0, 0.0] for part in ("fwd", "dw", "dx")}
    first_dx = [0.0, 0.0]  # the input gradient of the layer that reads the images
    for (shape, kshape, stride, padding), count in conv_layers(arch, size, batch).items():
        n, h, w_, c = shape
        k, _, _, o = kshape
        ho, wo = (h + 2 * padding - k) // stride + 1, (w_ + 2 * padding - k) // stride + 1
        gflop = 2 * n * ho * wo * o * c * k * k / 1e9
        r = time_layer(shape, kshape, stride, padding, a.repeats)
        line = {"case": a.case, "input": shape, "kernel": kshape, "stride": stride, "count": count,
                "gflop": round(gflop, 3)}
        for part, (tj, tt) in r.items():
            totals[part][0] += count * tj
            totals[part][1] += count * tt
        if shape == (batch, size, size, 3):
            first_dx = list(r["dx"])
            line[part] = {"jtl_ms": round(tj, 2), "torch_ms": round(tt, 2), "jtl_gflop_s": round(gflop / tj * 1e3, 1),
                          "torch_gflop_s": round(gflop / tt * 1e3, 1)}
        print(json.dumps(line), flush=True)
    total = {part: {"jtl_ms": round(tj, 1), "torch_ms": round(tt, 1), "ratio": round(tt / tj, 3)}
             for part, (tj, tt) in totals.items()}
    sj, st = (sum(v[i] for v in totals.values()) - first_dx[i] for i in (0, 1))
    line = {"case": a.case, "total": total, "train_conv_jtl_ms": round(sj, 1), "train_conv_torch_ms": round(st, 1),
            "ratio": round(st / sj, 3)}
    if a.with_step:
        step_j, step_t = time_steps(a.case, a.repeats)
        line.update(step_jtl_ms=round(step_j, 1), step_torch_ms=round(step_t, 1), step_ratio=round(step_t / step_j, 3),
                    conv_share_jtl=round(sj / step_j, 3), conv_share_torch=round(st / step_t, 3),
                    step_with_torch_convs_ms=round(step_j - sj + st, 1),
                    ratio_with_torch_convs=round(step_t / (step_j - sj + st), 3))
    print(json.dumps(line), flush=True)
    return 0


def time_steps(case: str, repeats: int) -> tuple[float, float]:
    """Median ms of jtl's and PyTorch's whole train step (``bench_train_step``), interleaved."""
    import jax

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_train_step as bench

    spec = bench.CASES[case]
    _, step, state, batch, _, _ = bench.build_jtl(*spec)
    torch_step = bench.build_torch(*spec, True)
    state_box = [state]

    def jtl_step():
        state_box[0], m = step(state_box[0], batch)
        jax.block_until_ready(m)

    return interleaved_ms(jtl_step, torch_step, repeats)


if __name__ == "__main__":
    sys.exit(main())
