"""Can jtl's ViT-S/16 train step reach 1.2x PyTorch's on this CPU? Its dense products decide.

    .venv/bin/python scripts/bench_dense_bound.py [--repeats 5] [--with-step]
    (figures: docs/benchmarks.md, "ViT-S/16 and ConvNeXt-T at 224 px")

A ViT-S/16 train step at 224 px, batch 32 (``vit_s16_224`` of ``scripts/bench_train_step.py``)
multiplies ``M = 32 * 197 = 6304`` token rows by the weights of 12 blocks x 4 dense layers
(``qkv`` 384 -> 1152, ``proj`` 384 -> 384, ``fc1`` 384 -> 1536, ``fc2`` 1536 -> 384), three
products per layer: forward ``y = x W`` (M x K @ K x N), input gradient ``dx = g W^T`` and
weight gradient ``dW = x^T g``. The script times each of those 12 distinct products in XLA
(jitted, f32, one product per executable) and in PyTorch (``torch.mm``, f32, its threads =
the CPU count), interleaved, medians, and sums them x 12 blocks: ``dense_jtl_ms`` and
``dense_torch_ms``.

With ``--with-step`` it also times both whole train steps (jtl's real step, PyTorch eager's
step of the same model, interleaved; each takes seconds): 1.2x needs a jtl step of at most
``step_torch_ms / 1.2``; when jtl's dense products alone take longer than that
(``dense_over_budget`` > 1), no change outside the matrix-product kernels reaches 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS, DIM, MLP, DEPTH = 32 * 197, 384, 1536, 12
LAYERS = {"qkv": (DIM, 3 * DIM), "proj": (DIM, DIM), "fc1": (DIM, MLP), "fc2": (MLP, DIM)}


def products() -> dict[str, tuple[tuple[int, int], tuple[int, int], bool, bool]]:
    """``{layer/part: (lhs shape, rhs shape, transpose lhs, transpose rhs)}`` of one block's step."""
    out = {}
    for name, (k, n) in LAYERS.items():
        out[f"{name}/fwd"] = ((ROWS, k), (k, n), False, False)  # x W
        out[f"{name}/dx"] = ((ROWS, n), (k, n), False, True)  # g W^T
        out[f"{name}/dw"] = ((ROWS, k), (ROWS, n), True, False)  # x^T g
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--with-step", action="store_true", help="also time both whole ViT-S/16 train steps")
    a = p.parse_args(argv)
    import jax
    import numpy as np
    import torch

    from jtl.bench.timing import interleaved_ms, machine, matmul_peak

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    print(json.dumps({**machine(), "torch_threads": torch.get_num_threads(),
                      "matmul_peak_gflop_s": round(matmul_peak() / 1e9, 1)}), flush=True)
    total_j = total_t = 0.0
    for name, (ls, rs, ta, tb) in products().items():
        lhs, rhs = (rng.standard_normal(s, dtype=np.float32) for s in (ls, rs))
        f = jax.jit(lambda x, y, ta=ta, tb=tb: (x.T if ta else x) @ (y.T if tb else y))
        xj, yj = jax.device_put(lhs), jax.device_put(rhs)
        xt, yt = torch.from_numpy(lhs), torch.from_numpy(rhs)
        xt, yt = (xt.t() if ta else xt), (yt.t() if tb else yt)
        # the same product: XLA's result against PyTorch's (float32 rounding apart)
        np.testing.assert_allclose(np.asarray(f(xj, yj)), torch.mm(xt, yt).numpy(), rtol=1e-3, atol=1e-2)
        tj, tt = interleaved_ms(lambda: f(xj, yj).block_until_ready(), lambda: torch.mm(xt, yt), a.repeats)
        m, k = (ls[1], ls[0]) if ta else ls
        n = rs[0] if tb else rs[1]
        gflop = 2 * m * k * n / 1e9
        total_j, total_t = total_j + DEPTH * tj, total_t + DEPTH * tt
        print(json.dumps({"product": name, "m_k_n": [m, k, n], "jtl_ms": round(tj, 2), "torch_ms": round(tt, 2),
                          "jtl_gflop_s": round(gflop / tj * 1e3, 1), "torch_gflop_s": round(gflop / tt * 1e3, 1),
                          "ratio": round(tt / tj, 3)}), flush=True)
    line = {"dense_jtl_ms": round(total_j, 1), "dense_torch_ms": round(total_t, 1),
            "dense_ratio": round(total_t / total_j, 3)}
    if a.with_step:
        from jtl.bench.conv_layers import time_steps

        step_j, step_t = time_steps("vit_s16_224", max(2, a.repeats // 2))
        budget = step_t / 1.2
        line.update(step_jtl_ms=round(step_j, 1), step_torch_ms=round(step_t, 1), step_ratio=round(step_t / step_j, 3),
                    step_budget_for_1_2x_ms=round(budget, 1), dense_over_budget=round(total_j / budget, 3))
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
