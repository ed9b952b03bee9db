"""Soak test: a long run with evaluation and checkpoints every 100 steps; does resident memory grow?

    .venv/bin/python scripts/soak.py                      # 2,000 steps, cifar_resnet8 on digits at 8 px
    .venv/bin/python scripts/soak.py --steps 400 --warmup 200   # quick look

Resident memory (VmRSS from /proc/self/status, no psutil) is sampled right after every
checkpoint (every ``--every`` steps, after that step's evaluation) and by a background thread
every 0.5 s. Growth is measured from the sample at ``--warmup`` steps (compilation, caches and
allocator pools settle by then) to the last one; the JSON on stdout has the figures:
``growth_pct`` ((final - warm) / warm), ``slope_mib_per_1000_steps`` (least-squares over the
post-warm-up samples), ``max_rss_mib`` and the samples themselves. Exit status 1 if growth is
5% or more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=100, help="evaluation and checkpoint cadence")
    ap.add_argument("--warmup", type=int, default=500, help="steps before the reference sample")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory, removed afterwards")
    args = ap.parse_args()

    from jtl.config import resolve
    from jtl.train.loop import Trainer

    cfg = resolve({
        "model": {"name": "cifar_resnet8", "num_classes": 10},
        "data": {"train": "digits", "eval": ("val=digits:val",), "image_size": 8, "channels": 1,
                 "normalize": "dataset", "augment": ("flip",)},
        "batch_size": 32, "eval_batch_size": 64, "total_steps": args.steps,
        "eval_every": args.every, "checkpoint_every": args.every, "log_every": args.every,
        "keep_checkpoints": 2, "best_metric": "val/top1", "progress": False,
        "optim": {"lr": 0.05, "schedule": "cosine"},
    })
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="jtl-soak-")
    workdir = Path(args.workdir or tmp.name) / "run"

    samples: list[tuple[int, float]] = []  # (step, RSS MiB) after each checkpoint
    peak = {"rss": 0.0}
    stop = threading.Event()

    def background():
        while not stop.wait(0.5):
            peak["rss"] = max(peak["rss"], rss_mib())

    trainer = Trainer(cfg, workdir)
    save = trainer.ckpt.save

    def save_and_sample(step, *a, **kw):
        save(step, *a, **kw)
        samples.append((int(step), rss_mib()))

    trainer.ckpt.save = save_and_sample
    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    trainer.run()
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()

    warm = [(s, r) for s, r in samples if s >= args.warmup]
    (s0, r0), (s1, r1) = warm[0], warm[-1]
    n = len(warm)
    xs, ys = [s / 1000 for s, _ in warm], [r for _, r in warm]
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    result = {
        "steps": args.steps,
        "every": args.every,
        "warmup_step": s0,
        "rss_at_warmup_mib": round(r0, 1),
        "rss_final_mib": round(r1, 1),
        "growth_pct": round(100 * (r1 - r0) / r0, 2),
        "slope_mib_per_1000_steps": round(slope, 2),
        "max_rss_mib": round(max(peak["rss"], *ys), 1),
        "rss_first_sample_mib": round(samples[0][1], 1),
        "wall_s": round(wall, 1),
        "samples": [[s, round(r, 1)] for s, r in samples],
    }
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()
    return 0 if result["growth_pct"] < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
