"""One CPU case, both frameworks: jtl's compiled float32 step against PyTorch eager in workers.

Timing alternates: ``repeats`` rounds of ``steps`` jtl steps, then ``steps`` steps of each
PyTorch worker (:func:`jtl.bench.torch_step.torch_workers`), whose faster one counts for the
round; each framework's per-step time is the median over rounds, so a shared, noisy machine
slows both alike.
"""

from __future__ import annotations

from jtl.bench.cases import CASES
from jtl.bench.jtl_step import build_jtl, first_step_times, model_flops
from jtl.bench.timing import median, rounds, timed
from jtl.bench.torch_step import torch_workers


def run_case(name: str, repeats: int, steps: int, peak: float, cache_dir: str) -> dict:
    """The case's result line: images/s and ms per step of both frameworks, their ratio (jtl /
    torch), the winning PyTorch setting, MFU against ``peak`` (f32 matmul FLOP/s), jtl's first
    step (cold and from the persistent compilation cache in ``cache_dir``) and XLA's buffers."""
    import jax

    case = CASES[name]
    build = lambda: build_jtl(case)  # noqa: E731
    cold, cached, mem = first_step_times(build, cache_dir)
    model, jstep, state, jbatch, x, y = build()
    rows = x.shape[0]
    flops = model_flops(model, case.size, rows)
    holder = [state]

    def jtl_steps():
        s = holder[0]
        for _ in range(steps):
            s, m = jstep(s, jbatch)
        jax.block_until_ready(m)
        holder[0] = s

    workers = torch_workers(case)
    jtl_steps()
    fns = {"jtl": lambda: timed(jtl_steps)}
    fns.update({k: (lambda w=w: w.run(steps)) for k, w in workers.items()})
    per_round = rounds(fns, repeats)
    for w in workers.values():
        w.close()
    tj = [t / steps for t in per_round.pop("jtl")]
    wins = [min(per_round, key=lambda k: per_round[k][i]) for i in range(repeats)]
    tt = [per_round[k][i] / steps for i, k in enumerate(wins)]
    torch_setting = max(set(wins), key=wins.count)
    mj, mt = median(tj), median(tt)
    return {
        "case": name, "arch": case.arch, "image_size": case.size, "batch": rows,
        "jtl_img_s": round(rows / mj, 1), "torch_img_s": round(rows / mt, 1), "ratio": round(mt / mj, 3),
        "jtl_ms": round(mj * 1e3, 1), "torch_ms": round(mt * 1e3, 1), "torch_setting": torch_setting,
        "model_gflop": round(flops / 1e9, 2), "mfu": round(flops / mj / peak, 3),
        "torch_mfu": round(flops / mt / peak, 3), "matmul_peak_gflop_s": round(peak / 1e9, 1),
        "first_step_s": round(cold, 2), "first_step_cached_s": round(cached, 2),
        "peak_mib": round(mem, 1) if mem is not None else None,
    }
