"""Sweep throughput: K configurations of the small adaptation model, one after another vs vectorized.

The K runs are DANN on digits -> MNIST-M-style digits (``configs/da_digits.py``:
cifar_resnet8 + 256-d bottleneck + discriminator, 16 px, batch 32 + 32) with K
different trade-off weights and learning rates, i.e. what ``jtl sweep`` trains:

- sequential: ``Trainer(cfg_k, workdir_k).run()`` for k = 1..K (``jtl sweep --sequential``);
- vectorized: ``VectorTrainer(cfgs, workdirs).run()`` (what ``jtl sweep`` picks).

Both include everything a run does (data, compilation, evaluation, checkpoints). One
JSON line per K with both wall times and their ratio, plus the steady-state step
times (median over the logged steps) and the time to the first step.

    .venv/bin/python scripts/bench_sweep.py --k 8,32 --steps 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def configs(k: int, steps: int):
    from jtl.config import load_config  # noqa: PLC0415

    out = []
    for i in range(k):
        weight = 0.1 * (1 + i % 8) / 2  # 0.05 .. 0.4
        lr = 0.01 * (0.5 + (i // 8) / 4)
        out.append(load_config(f"{ROOT}/configs/da_digits.py:dann", [
            f"loss.dann={weight}", f"optim.lr={lr}", f"total_steps={steps}", f"eval_every={steps}",
            f"checkpoint_every={steps}", "log_every=10", "progress=False"]))
    return out


def step_times(workdirs) -> float:
    """Median seconds per step of a run, from its logged images/s (steady state, compile excluded)."""
    rates = []
    for wd in workdirs:
        rows = [json.loads(x) for x in (Path(wd) / "metrics.jsonl").read_text().splitlines()]
        per_step = [64 / r["train/images_per_s"] for r in rows[1:] if "train/images_per_s" in r]
        rates.append(statistics.median(per_step))
    return sum(rates) / len(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", default="8,32", help="comma-separated numbers of configurations")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--workdir", default="", help="where the runs go (default: a temporary directory)")
    a = p.parse_args(argv)
    from jtl.train.loop import Trainer  # noqa: PLC0415
    from jtl.train.vector import VectorTrainer, plan_groups  # noqa: PLC0415

    base = Path(a.workdir or tempfile.mkdtemp(prefix="jtl-bench-sweep-"))
    import jax  # noqa: PLC0415

    print(json.dumps({"machine": f"{jax.devices()[0].platform} x{jax.device_count()}", "jax": jax.__version__,
                      "steps": a.steps}), flush=True)
    for k in (int(x) for x in a.k.split(",")):
        cfgs = configs(k, a.steps)
        assert plan_groups(cfgs) == [list(range(k))], "the configurations must form one vectorized group"
        seq_dirs = [base / f"k{k}" / "sequential" / str(i) for i in range(k)]
        vec_dirs = [base / f"k{k}" / "vectorized" / str(i) for i in range(k)]
        t = time.perf_counter()
        seq_first = []
        for cfg, wd in zip(cfgs, seq_dirs):
            seq_first.append(Trainer(cfg, wd).run()["first_step_s"])
        seq = time.perf_counter() - t
        t = time.perf_counter()
        vec_summary = VectorTrainer(cfgs, vec_dirs).run()
        vec = time.perf_counter() - t
        seq_step, vec_step = step_times(seq_dirs[:1]) * k, step_times(vec_dirs[:1])
        print(json.dumps({
            "k": k, "sequential_s": round(seq, 1), "vectorized_s": round(vec, 1), "ratio": round(seq / vec, 2),
            "sequential_first_step_s_total": round(sum(seq_first), 1),
            "vectorized_first_step_s": round(vec_summary[0]["first_step_s"], 1),
            "steady_step_ms_sequential_k_runs": round(1e3 * seq_step, 1), "steady_step_ms_vectorized": round(1e3 * vec_step, 1),
            "steady_ratio": round(seq_step / vec_step, 2),
        }), flush=True)
        shutil.rmtree(base / f"k{k}", ignore_errors=True)
    if not a.workdir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
