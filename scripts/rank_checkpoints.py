"""Do transferability scores rank pretrained checkpoints as fine-tuning does? (docs/transferability.md)

1. Pretrain ``cifar_resnet8`` checkpoints differently (``--steps-pretrain`` steps of batch 128):
   Fashion-MNIST classes 0-4, the same for a tenth of the steps, colour-inverted Fashion-MNIST
   classes 0-4, scikit-learn digits, and a 1-step run (practically random weights).
2. Score each on the target task (Fashion-MNIST classes 5-9, the ``limit`` labelled training
   images the fine-tuning will see) with ``jtl rank``'s scores (no training).
3. Fine-tune each on those labels (``configs/finetune.py:finetune``, several seeds) and
   measure target test top-1 (5,000 images).
4. Kendall's tau between each score and the mean fine-tuned accuracy.

Every run is an ordinary ``jtl train`` run in its own sub-directory (finished runs are
skipped when the script is run again).

    .venv/bin/python scripts/rank_checkpoints.py --workdir out/rank --limit 100 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "finetune.py")
TARGET = (5, 6, 7, 8, 9)


def checkpoints(steps: int) -> dict[str, list[str]]:
    """name -> overrides of configs/finetune.py:source."""
    return {
        "fmnist0-4": [f"total_steps={steps}"],
        "fmnist0-4_short": [f"total_steps={max(2, steps // 10)}", "optim.warmup_steps=1"],
        "fmnist0-4_inverted": [f"total_steps={steps}", "data.train=fashion_mnist:invert",
                               "data.eval=('test=fashion_mnist:invert:test',)"],
        "digits": [f"total_steps={steps}", "data.train=digits", "data.classes=()", "model.num_classes=10",
                   "data.augment=()", "data.eval=('test=digits:test',)"],
        "random_1step": ["total_steps=1", "optim.warmup_steps=0"],
    }


def train_once(arg: str, workdir: Path, overrides: list[str]) -> dict:
    """``jtl train --config configs/finetune.py:ARG`` into ``workdir`` (skipped if finished)."""
    from jtl.config import load_config  # noqa: PLC0415
    from jtl.train import train  # noqa: PLC0415

    if (workdir / "summary.json").exists():
        return json.loads((workdir / "summary.json").read_text())
    t = time.perf_counter()
    summary = train(load_config(f"{CONFIG}:{arg}", overrides + ["progress=False"]), workdir)
    print(f"  {workdir.name:<32} test top-1 {summary['final']['test']['top1']:.4f} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="out/rank")
    p.add_argument("--limit", type=int, default=100, help="target labels (scored and fine-tuned on)")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps (batch: half the labels, at most 128)")
    p.add_argument("--steps-pretrain", type=int, default=150, help="pretraining steps (batch 128)")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds")
    p.add_argument("--out", default="", help="also write the markdown table here")
    a = p.parse_args(argv)
    import numpy as np  # noqa: PLC0415
    from scipy.stats import kendalltau  # noqa: PLC0415

    from jtl import data as jdata  # noqa: PLC0415
    from jtl.analysis.rank import DEFAULT_SCORES, rank_models  # noqa: PLC0415

    out = Path(a.workdir).absolute()
    seeds = [int(s) for s in a.seeds.split(",")]
    ckpts = checkpoints(a.steps_pretrain)
    t0 = time.perf_counter()
    print("pretraining the checkpoints ...", flush=True)
    for name, overrides in ckpts.items():
        train_once("source", out / "pretrained" / name, overrides)
    t_pre = time.perf_counter() - t0
    labelled = jdata.load("fashion_mnist", "train", classes=TARGET, limit=a.limit, seed=0)
    t = time.perf_counter()
    rows = {r["model"]: r for r in rank_models([str(out / "pretrained" / n) for n in ckpts], labelled)}
    t_score = time.perf_counter() - t
    print(f"scored {len(ckpts)} checkpoints on {len(labelled)} target images in {t_score:.1f} s", flush=True)
    print(f"fine-tuning each on {a.limit} target labels, seeds {a.seeds} ...", flush=True)
    acc = {}
    for name in ckpts:
        accs = []
        for seed in seeds:
            s = train_once(f"finetune,limit={a.limit}", out / f"finetune{a.limit}" / f"{name}_seed{seed}",
                           [f"model.init={out / 'pretrained' / name}", f"seed={seed}", f"total_steps={a.steps}"])
            accs.append(s["final"]["test"]["top1"])
        acc[name] = (float(np.mean(accs)), float(np.std(accs)))
    names = list(ckpts)
    lines = [f"Target: Fashion-MNIST classes 5-9, {len(labelled)} labelled images (scored on them, fine-tuned on "
             f"them for {a.steps} steps, seeds {a.seeds}); fine-tuned target test top-1 over 5,000 images; "
             f"checkpoints pretrained {a.steps_pretrain} steps.", "",
             "| checkpoint | fine-tuned top-1 (%) | " + " | ".join(DEFAULT_SCORES) + " |",
             "|---|---:|" + "---:|" * len(DEFAULT_SCORES)]
    for n in sorted(names, key=lambda n: -acc[n][0]):
        r = rows[str(out / "pretrained" / n)]
        lines.append(f"| {n} | {100 * acc[n][0]:.1f} +- {100 * acc[n][1]:.1f} | "
                     + " | ".join(f"{r[s]:.4f}" for s in DEFAULT_SCORES) + " |")
    lines += ["", "| score | Kendall's tau vs fine-tuned top-1 |", "|---|---:|"]
    taus = {}
    for s in DEFAULT_SCORES:
        taus[s] = float(kendalltau([rows[str(out / "pretrained" / n)][s] for n in names],
                                   [acc[n][0] for n in names]).statistic)
        lines.append(f"| {s} | {taus[s]:+.2f} |")
    wall = time.perf_counter() - t0
    lines += ["", f"wall time {wall:.0f} s (pretraining {t_pre:.0f} s, scoring {t_score:.1f} s)"]
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="")
    (out / f"results{a.limit}.json").write_text(json.dumps({"accuracy": acc, "scores": rows, "tau": taus,
                                                            "wall_s": wall}, indent=2) + "\n")
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
