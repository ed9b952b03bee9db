"""Where a compiled step's time goes: its operations grouped by what they compute (from the
optimised HLO text), and the longest-running operations of a profiler trace."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import shutil

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
    """{instruction name: group} for the fusions and plain operations of the entry computation;
    the groups: ``convolution``, ``dot`` (matrix products: 1x1 convolutions,
    im2col, dense layers), ``transpose`` (layout copies), ``reduce`` (BatchNorm statistics,
    pooling) and ``elementwise`` (the rest)."""
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


def group_times(events, groups: dict[str, str], steps: int, top: int) -> dict:
    """A trace's complete events (``ph == "X"``) of the operations in ``groups``, per step:
    ``{"ms_per_step": {group: ms}, "sum_ms", "top": {group: [[operation, ms], ...]}}``, largest first."""
    per_op = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in groups:
            per_op[e["name"]] += e["dur"] / 1e3 / steps
    total = collections.Counter()
    tops = collections.defaultdict(list)
    for name, ms in per_op.most_common():
        total[groups[name]] += ms
        if len(tops[groups[name]]) < top:
            tops[groups[name]].append([name, round(ms, 1)])
    return {"ms_per_step": {g: round(v, 1) for g, v in total.most_common()},
            "sum_ms": round(sum(total.values()), 1), "top": tops}


def top_kernels(events, steps: int, top: int = 25) -> list[tuple[str, float, float]]:
    """[(name, ms per step, calls per step)] of the longest-running of ``events`` ((name,
    microseconds) pairs), longest first."""
    tot = {}
    for name, dur in events:
        t, c = tot.get(name, (0.0, 0))
        tot[name] = (t + dur, c + 1)
    rows = sorted(tot.items(), key=lambda kv: -kv[1][0])
    return [(name[:90], round(t / steps / 1e3, 3), round(c / steps, 1)) for name, (t, c) in rows[:top]]


def profile_jtl(compiled, state, batch, steps: int, log_dir: str):
    """Runs ``steps`` steps under ``jax.profiler`` and sums the device ops (GPU kernels, or XLA:CPU
    ops) of the Perfetto trace by name; the trace is copied to ``log_dir/jtl_perfetto_trace.json.gz``.
    Returns (state, total device ms per step, top list, {device line: ms per step})."""
    import jax

    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for _ in range(steps):
            state, m = compiled(state, batch)
        jax.block_until_ready(m)
    path = sorted(glob.glob(os.path.join(log_dir, "**", "*perfetto_trace.json.gz"), recursive=True))[-1]
    shutil.copy(path, os.path.join(log_dir, "jtl_perfetto_trace.json.gz"))  # near the top: $OUT keeps 2 levels
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    pnames = {e["pid"]: e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "process_name" and "args" in e}
    tnames = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name" and "args" in e}
    gpu_pids = {pid for pid, n in pnames.items() if "GPU" in n or "gpu" in n}
    per_thread = {}
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu_pids:
            k = f"{pnames[e['pid']]} / {tnames.get((e['pid'], e.get('tid')), e.get('tid'))}"
            per_thread[k] = per_thread.get(k, 0.0) + e.get("dur", 0.0) / steps / 1e3
    if gpu_pids:  # GPU kernels on the CUDA stream lines (not the derived "XLA Ops"/"XLA Modules" lines)
        streams = {k for k, n in tnames.items() if k[0] in gpu_pids and "stream" in str(n).lower()}
        sel = [(e["name"], e["dur"]) for e in events if e.get("ph") == "X" and e.get("pid") in gpu_pids
               and (not streams or (e["pid"], e.get("tid")) in streams)]
    else:  # CPU backend: XLA ops on the host threads (for testing the bench)
        sel = [(e["name"], e["dur"]) for e in events if e.get("ph") == "X" and "dur" in e
               and not e["name"].startswith(("$", "Thunk", "PjRt", "TfrtCpu"))]
    total = sum(d for _, d in sel) / steps / 1e3
    return state, round(total, 2), top_kernels(sel, steps), {k: round(v, 2) for k, v in per_thread.items()}
