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
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))


def computations(hlo: str) -> dict[str, str]:
    """HLO module text -> {computation name: its body}."""
    out, name, body = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name, body = head.group(1), []
        elif line.startswith("}") and name:
            out[name] = "\n".join(body)
            name = None
        elif name:
            body.append(line)
    return out


def classify(hlo: str) -> dict[str, str]:
    """{instruction name: group} for the fusions and plain operations of the entry computation."""
    bodies = computations(hlo)
    groups = {}
    for line in hlo.splitlines():
        m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if not m:
            continue
        name, op = m.groups()
        text = op + "("
        if op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line)
            text = bodies.get(called.group(1), "") if called else ""
        if "convolution(" in text:
            groups[name] = "convolution"
        elif "dot(" in text:
            groups[name] = "dot"
        elif "transpose(" in text or name.startswith("transpose"):
            groups[name] = "transpose"
        elif "reduce(" in text or "reduce-window(" in text or "reduce_window" in name:
            groups[name] = "reduce"
        else:
            groups[name] = "elementwise"
    return groups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="resnet18_64")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=8)
    a = p.parse_args(argv)
    import jax

    import bench_train_step as bench

    if a.case not in bench.CASES:
        p.error(f"unknown case {a.case!r}; known: {', '.join(bench.CASES)}")
    _, step, state, batch, _, _ = bench.build_jtl(*bench.CASES[a.case])
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
    per_op = collections.Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e.get("name") in groups:
            per_op[e["name"]] += e["dur"] / 1e3 / a.steps
    total = collections.Counter()
    top = collections.defaultdict(list)
    for name, ms in per_op.most_common():
        total[groups[name]] += ms
        if len(top[groups[name]]) < a.top:
            top[groups[name]].append([name, round(ms, 1)])
    print(json.dumps({"case": a.case, "ms_per_step": {g: round(v, 1) for g, v in total.most_common()},
                      "sum_ms": round(sum(total.values()), 1), "top": top}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
