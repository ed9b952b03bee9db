"""Every convolution of a train step, jtl (XLA:CPU) against PyTorch (oneDNN), layer by layer.

    .venv/bin/python scripts/bench_conv_layers.py [--case resnet18_64] [--repeats 7] [--few-input-channels N]
    (figures: docs/benchmarks.md, "Train step vs PyTorch")

For a case of ``scripts/bench_train_step.py`` the script records the shape of every call to
``jtl.models.layers.conv2d`` while tracing the model (so jtl's own dispatch is measured: 1x1
kernels as a matrix product, im2col on <= 2x2 outputs, weight gradients tap by tap below
``FEW_INPUT_CHANNELS`` input channels, XLA's convolution elsewhere), then
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

The measurements are ``jtl.bench.conv_layers``; this script prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch's OpenMP starts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jtl.bench.cases import CASES  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="resnet18_64", choices=sorted(CASES))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--with-step", action="store_true", help="also time both whole train steps")
    p.add_argument("--few-input-channels", type=int, default=None,
                   help="jtl.models.layers.FEW_INPUT_CHANNELS for this run (0: XLA's weight gradient everywhere)")
    a = p.parse_args(argv)
    if a.few_input_channels is not None:
        from jtl.models import layers

        layers.FEW_INPUT_CHANNELS = a.few_input_channels
    import torch

    from jtl.bench.conv_layers import conv_gflop, conv_layers, time_layer, time_steps

    torch.set_num_threads(os.cpu_count() or 1)
    case = CASES[a.case]
    arch, size, batch = case.arch, case.size, case.rows  # the DANN step's backbone sees source + target
    totals = {part: [0.0, 0.0] for part in ("fwd", "dw", "dx")}
    first_dx = [0.0, 0.0]  # the input gradient of the layer that reads the images
    for (shape, kshape, stride, padding), count in conv_layers(arch, size, batch).items():
        gflop = conv_gflop(shape, kshape, stride, padding)
        r = time_layer(shape, kshape, stride, padding, a.repeats)
        line = {"case": a.case, "input": shape, "kernel": kshape, "stride": stride, "count": count,
                "gflop": round(gflop, 3)}
        for part, (tj, tt) in r.items():
            totals[part][0] += count * tj
            totals[part][1] += count * tt
            line[part] = {"jtl_ms": round(tj, 2), "torch_ms": round(tt, 2), "jtl_gflop_s": round(gflop / tj * 1e3, 1),
                          "torch_gflop_s": round(gflop / tt * 1e3, 1)}
        if shape == (batch, size, size, 3):
            first_dx = list(r["dx"])
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


if __name__ == "__main__":
    sys.exit(main())
