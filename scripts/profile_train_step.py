"""Where jtl's compiled train step spends its time on XLA:CPU, by kind of operation.

    .venv/bin/python scripts/profile_train_step.py [--case resnet18_64] [--steps 3] [--top 8]
    (figures: docs/benchmarks.md, "Train step vs PyTorch")

Runs a case of ``scripts/bench_train_step.py`` under ``jax.profiler.trace`` with XLA:CPU's
per-operation trace events (``--xla_cpu_enable_xprof_traceme=true``), then sums each compiled
operation's time per step and groups it by what the operation computes, read from the
optimised HLO: ``convolution``, ``dot`` (matrix products: 1x1 convolutions, im2col, dense
layers), ``transpose`` (layout copies XLA inserts, usually before weight-gradient
convolutions), ``reduce`` (BatchNorm statistics, pooling), and ``elementwise`` (the rest).
Prints one JSON line: milliseconds per step per group, and the ``--top`` operations of each.
The grouping is ``jtl.bench.trace`` (``classify``, ``group_times``).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="resnet18_64")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=8)
    a = p.parse_args(argv)
    import jax

    from jtl.bench.cases import CASES
    from jtl.bench.jtl_step import build_jtl
    from jtl.bench.trace import classify, group_times

    if a.case not in CASES:
        p.error(f"unknown case {a.case!r}; known: {', '.join(CASES)}")
    _, step, state, batch, _, _ = build_jtl(CASES[a.case])
    for _ in range(2):  # compile and warm up outside the trace
        state, m = step(state, batch)
        jax.block_until_ready(m)
    groups = classify(step.lower(state, batch).compile().as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(a.steps):
                state, m = step(state, batch)
                jax.block_until_ready(m)
        trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
    print(json.dumps({"case": a.case, **group_times(trace["traceEvents"], groups, a.steps, a.top)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
