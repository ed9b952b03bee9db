"""The main job: a complete transfer study on CPU in a few minutes (``make demo``).

1. Pretrain ``cifar_resnet8`` on the source task (Fashion-MNIST classes 0-4).
2. On the target task (classes 5-9) with 100 / 1,000 / all 30,000 labels, compare
   a linear probe on the frozen pretrained features, full fine-tuning from the
   pretrained weights, and training from scratch.
3. Print the table of target test top-1, write ``results.json``, ``results.md``
   and ``transfer.png`` into the workdir.

Every run is an ordinary ``jtl train`` run of ``configs/finetune.py`` in its own
sub-directory (re-running resumes or skips finished runs).

    .venv/bin/python scripts/demo_transfer.py --workdir out/demo
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
RECIPES = ("linear_probe", "finetune", "scratch")


def budget_overrides(budget: int) -> list[str]:
    """Steps and batch per label budget: small budgets take small batches and fewer steps."""
    if budget == 100:
        return ["data.limit=100", "batch_size=50", "total_steps=150"]
    if budget == 1000:
        return ["data.limit=1000", "total_steps=250"]
    return ["data.limit=0", "total_steps=300"]


def run(recipe: str, workdir: Path, overrides: list[str]) -> dict:
    from jtl.config import load_config  # noqa: PLC0415
    from jtl.train import train  # noqa: PLC0415

    summary_file = workdir / "summary.json"
    if summary_file.exists():
        return json.loads(summary_file.read_text())
    cfg = load_config(f"{CONFIG}:{recipe}", overrides + ["progress=False"])
    t = time.perf_counter()
    summary = train(cfg, workdir)
    print(f"  {workdir.name:<22} target top-1 {summary['final']['test']['top1']:.4f}  ({time.perf_counter() - t:.0f} s)",
          flush=True)
    return summary


def plot(results: dict, budgets: list[int], labels: list[str], out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for recipe in RECIPES:
        ax.plot(range(len(budgets)), [100 * results[recipe][str(b)] for b in budgets], marker="o", label=recipe)
    ax.set_xticks(range(len(budgets)), labels)
    ax.set_xlabel("target labels")
    ax.set_ylabel("target test top-1 (%)")
    ax.set_title("Fashion-MNIST 0-4 -> 5-9, cifar_resnet8")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="out/demo")
    p.add_argument("--budgets", default="100,1000,0", help="target label budgets; 0 = all")
    a = p.parse_args(argv)
    from jtl.errors import JtlError  # noqa: PLC0415

    out = Path(a.workdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    budgets = [int(b) for b in a.budgets.split(",")]
    labels = [f"{b:,}" if b else "all (30,000)" for b in budgets]
    t0 = time.perf_counter()
    try:
        print("pretraining on the source task (Fashion-MNIST classes 0-4) ...", flush=True)
        source = run("source", out / "source", [])
        print(f"  source test top-1 {source['final']['test']['top1']:.4f}", flush=True)
        results: dict = {r: {} for r in RECIPES}
        for budget, label in zip(budgets, labels):
            print(f"target task (classes 5-9) with {label} labels ...", flush=True)
            for recipe in RECIPES:
                init = [] if recipe == "scratch" else [f"model.init={out / 'source'}"]
                s = run(recipe, out / f"{recipe}_{budget or 'all'}", budget_overrides(budget) + init)
                results[recipe][str(budget)] = s["final"]["test"]["top1"]
    except JtlError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    header = "| recipe | " + " | ".join(labels) + " |"
    rows = [header, "|" + "---|" * (len(labels) + 1)]
    for recipe in RECIPES:
        rows.append(f"| {recipe} | " + " | ".join(f"{100 * results[recipe][str(b)]:.1f}" for b in budgets) + " |")
    table = "\n".join(rows)
    print("\nTarget test top-1 (%), Fashion-MNIST classes 5-9 (5,000 test images):\n" + table)
    print(f"\nsource pretraining: {100 * source['final']['test']['top1']:.1f}% on source test; "
          f"total wall time {wall:.0f} s")
    (out / "results.json").write_text(json.dumps({"target_top1": results, "source_top1": source["final"]["test"]["top1"],
                                                  "wall_time_s": wall}, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    plot(results, budgets, labels, out / "transfer.png")
    print(f"wrote {out / 'results.md'} and {out / 'transfer.png'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
