"""The main job: a complete transfer study on CPU in a few minutes (``make demo``).

1. Pretrain ``cifar_resnet8`` on the source task (Fashion-MNIST classes 0-4).
2. On the target task (classes 5-9) with 100 / 1,000 / all 30,000 labels, compare
   a linear probe on the frozen pretrained features, full fine-tuning from the
   pretrained weights, and training from scratch; every fine-tuning and from-scratch
   run sees the same number of images (``--target-steps`` x ``--batch``), only its
   label pool differs (a probe, on cached features, keeps its recipe's 300 steps).
3. Print the table of target test top-1, write ``results.json``, ``results.md``
   and ``transfer.png`` into the workdir.
4. Domain adaptation on one shift (``configs/da_fmnist_noise.py``: Fashion-MNIST ->
   Gaussian-noise Fashion-MNIST, one seed): source-only, two methods, DANN and DAN, and
   the zero-weight control ``dann_weight0`` (DANN's recipe with ``loss.dann=0``), each
   starting from the source-only run, trained and scored as ``jtl da-results`` does
   (:mod:`jtl.results.da_study`); its method table and ``adaptation.png``.

Every run is an ordinary ``jtl train`` run of ``configs/finetune.py`` (or a one-seed
``jtl sweep`` of ``configs/da_fmnist_noise.py``) in its own sub-directory (re-running
resumes or skips finished runs). Each section prints its wall and CPU time.

    .venv/bin/python scripts/demo_transfer.py --workdir out/demo
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "finetune.py")
RECIPES = ("linear_probe", "finetune", "scratch")
DA_SHIFT, DA_METHODS = "fmnist_noise", ("dann", "dan")


def cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def budget_overrides(budget: int, steps: int, batch: int) -> list[str]:
    """Every target run gets the same compute (``steps`` x ``batch`` images); only its label pool
    differs. One batch and one step count for every budget make the runs of a recipe one compiled
    program (jax's persistent cache compiles it once)."""
    return [f"data.limit={budget}", f"batch_size={batch}", f"total_steps={steps}"]


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


def adaptation(out: Path, steps: int) -> tuple[dict[str, dict], list[str]]:
    """Source-only, DA_METHODS and the zero-weight control on DA_SHIFT, seed 0, ``steps`` steps each
    (the methods from the source-only run), as ``jtl da-results`` trains, scores and evaluates them
    (:mod:`jtl.results.da_study`): ({name: its row}, the method table's lines)."""
    from jtl.errors import JtlError  # noqa: PLC0415
    from jtl.results.da_study import Study, add_final_accuracy, score_runs, train_all  # noqa: PLC0415
    from jtl.results.da_tables import CONTROLS, method_table  # noqa: PLC0415

    study = Study(config=str(ROOT / "configs" / f"da_{DA_SHIFT}.py"), name=DA_SHIFT, root=out / "adaptation",
                  seeds=[0], methods=["source_only", *DA_METHODS], controls=list(CONTROLS),
                  overrides=[f"total_steps={steps}"])
    rows = score_runs(study, train_all(study))
    if "source_only" not in rows:
        raise JtlError(f"the source-only run failed; see {study.folder / 'source_only'}")
    add_final_accuracy(study, rows)
    return {name: r[0] for name, r in rows.items()}, method_table(rows, study.select_label)


def plot_adaptation(rows: dict[str, dict], out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [100 * rows[n]["source_val"] for n in names], 0.4, label="source val")
    ax.bar([i + 0.2 for i in x], [100 * rows[n]["target"] for n in names], 0.4, label="target test")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 110)
    ax.set_title("Fashion-MNIST -> noisy Fashion-MNIST, cifar_resnet8")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="out/demo")
    p.add_argument("--budgets", default="100,1000,0", help="target label budgets; 0 = all")
    p.add_argument("--source-steps", type=int, default=250, help="steps of the source pretraining")
    p.add_argument("--target-steps", type=int, default=100, help="steps of every target run (each label budget)")
    p.add_argument("--batch", type=int, default=50, help="batch of the source and target runs")
    p.add_argument("--da-steps", type=int, default=60, help="adaptation section: steps of each run (0: skip it)")
    a = p.parse_args(argv)
    from jtl.errors import JtlError  # noqa: PLC0415

    out = Path(a.workdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    budgets = [int(b) for b in a.budgets.split(",")]
    labels = [f"{b:,}" if b else "all (30,000)" for b in budgets]
    t0, c0 = time.perf_counter(), cpu_s()
    try:
        print("pretraining on the source task (Fashion-MNIST classes 0-4) ...", flush=True)
        source = run("source", out / "source", [f"batch_size={a.batch}", f"total_steps={a.source_steps}"])
        print(f"  source test top-1 {source['final']['test']['top1']:.4f}", flush=True)
        results: dict = {r: {} for r in RECIPES}
        for budget, label in zip(budgets, labels):
            print(f"target task (classes 5-9) with {label} labels ...", flush=True)
            for recipe in RECIPES:
                init = [] if recipe == "scratch" else [f"model.init={out / 'source'}"]
                # A probe trains on cached features (nearly free): it keeps its recipe's steps and batch.
                probe_batch = min(128, budget // 2) if budget else 128
                overrides = ([f"data.limit={budget}", f"batch_size={probe_batch}"] if recipe == "linear_probe" else
                             budget_overrides(budget, a.target_steps, a.batch)) + init
                s = run(recipe, out / f"{recipe}_{budget or 'all'}", overrides)
                results[recipe][str(budget)] = s["final"]["test"]["top1"]
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        da_rows, da_table, t1, c1 = {}, [], time.perf_counter(), cpu_s()
        if a.da_steps:
            print(f"domain adaptation: {DA_SHIFT}, source-only, {', '.join(DA_METHODS)} and the zero-weight control ...",
                  flush=True)
            da_rows, da_table = adaptation(out, a.da_steps)
        da_wall, da_cpu = time.perf_counter() - t1, cpu_s() - c1
    except JtlError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    header = "| recipe | " + " | ".join(labels) + " |"
    rows = [header, "|" + "---|" * (len(labels) + 1)]
    for recipe in RECIPES:
        rows.append(f"| {recipe} | " + " | ".join(f"{100 * results[recipe][str(b)]:.1f}" for b in budgets) + " |")
    table = "\n".join(rows)
    print("\nTarget test top-1 (%), Fashion-MNIST classes 5-9 (5,000 test images):\n" + table)
    print(f"\nsource pretraining: {100 * source['final']['test']['top1']:.1f}% on source test; "
          f"fine-tuning section: wall {wall:.0f} s, CPU {cpu:.0f} s")
    text = table + "\n"
    if da_rows:
        da_table = "\n".join(da_table)
        print(f"\nDomain adaptation, {DA_SHIFT} (seed 0; target top-1 uses target labels: oracle, for the "
              f"table only):\n{da_table}\nadaptation section: wall {da_wall:.0f} s, CPU {da_cpu:.0f} s")
        text += f"\n## Domain adaptation: {DA_SHIFT} (seed 0)\n\n{da_table}\n"
        plot_adaptation(da_rows, out / "adaptation.png")
    da_json = {n: {"target_top1": r["target"], "source_val_top1": r["source_val"]} for n, r in da_rows.items()}
    (out / "results.json").write_text(json.dumps({
        "target_top1": results, "source_top1": source["final"]["test"]["top1"], "adaptation": da_json,
        "wall_time_s": {"finetune": wall, "adaptation": da_wall},
        "cpu_time_s": {"finetune": cpu, "adaptation": da_cpu}}, indent=2) + "\n")
    (out / "results.md").write_text(text)
    plot(results, budgets, labels, out / "transfer.png")
    print(f"total wall time {wall + da_wall:.0f} s, CPU {cpu + da_cpu:.0f} s; wrote {out / 'results.md'}, "
          f"{out / 'transfer.png'}" + (f", {out / 'adaptation.png'}" if da_rows else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
