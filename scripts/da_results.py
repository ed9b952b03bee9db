"""Domain-adaptation results: every method on each shift, several seeds, model selection
without target labels, written to a markdown table (docs/results.md).

For each shift ``configs/da_<shift>.py`` and seed: the ``source_only`` run (which is
also the source warm-up every method starts from), then each method. Finished runs
are skipped, so the script resumes where it stopped. Per run it reads the final
target accuracy (an ``oracle`` number: it uses target labels, reported, never used
to choose) and scores the run without target labels: source validation accuracy,
SND and IM on the target predictions, and DEV.

    .venv/bin/python scripts/da_results.py --shifts fmnist_mnistm,fmnist_invert \\
        --methods source_only,dann,cdan,mcc --seeds 0,1,2 --workdir runs/da --out docs/results.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ("source_val", "snd", "im", "dev")


def run_one(shift: str, method: str, seed: int, workdir: Path, source_dir: Path | None, extra: list[str]) -> dict:
    from jtl.config import load_config  # noqa: PLC0415
    from jtl.train import train  # noqa: PLC0415

    summary_file = workdir / "summary.json"
    if not summary_file.exists():
        arg = method if source_dir is None else f"{method},init={source_dir}"
        cfg = load_config(f"{ROOT}/configs/da_{shift}.py:{arg}",
                          [f"seed={seed}", "save_predictions=True", "progress=False"] + extra)
        t = time.perf_counter()
        summary = train(cfg, workdir)
        summary["wall_time_s"] = time.perf_counter() - t
        summary_file.write_text(json.dumps(summary, indent=2, default=str))
        print(f"{shift} {method} seed {seed}: target {summary['final']['target_test']['top1']:.4f} "
              f"({summary['wall_time_s']:.0f} s)", flush=True)
    return json.loads(summary_file.read_text())


def scores(workdir: Path, step: int) -> dict:
    """Selection scores of a run from its saved predictions at ``step`` (no target labels used)."""
    from jtl import select  # noqa: PLC0415

    sv = np.load(workdir / "predictions" / f"source_val-{step}.npz")
    tg = np.load(workdir / "predictions" / f"target_test-{step}.npz")
    half = len(sv["labels"]) // 2  # DEV: one half of source val fits the density ratio, the other is validated
    losses = select.per_sample_cross_entropy(sv["logits"][half:], sv["labels"][half:])
    return {
        "source_val": select.source_val_accuracy(sv["logits"], sv["labels"]),
        "snd": select.snd(tg["logits"]),
        "im": select.information_maximization_score(tg["logits"]),
        "dev": select.dev_risk(sv["features"][:half], tg["features"], sv["features"][half:], losses),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shifts", default="fmnist_mnistm,fmnist_invert")
    p.add_argument("--methods", default="all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", default="runs/da")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--override", action="append", default=[], help="extra KEY=VALUE config overrides")
    a = p.parse_args(argv)
    from jtl.methods import METHODS  # noqa: PLC0415
    from jtl.select import METHODS as SELECTION  # noqa: PLC0415

    methods = list(METHODS) if a.methods == "all" else a.methods.split(",")
    if "source_only" not in methods:
        methods.insert(0, "source_only")
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: dict = {}
    for shift in a.shifts.split(","):
        for seed in seeds:
            src = Path(a.workdir).absolute() / shift / f"seed{seed}" / "source_only"
            for method in methods:
                wd = src if method == "source_only" else src.parent / method
                s = run_one(shift, method, seed, wd, None if method == "source_only" else src, a.override)
                r = {"target": s["final"]["target_test"]["top1"], "wall": s.get("wall_time_s", float("nan")),
                     **scores(wd, s["step"])}
                rows.setdefault(shift, {}).setdefault(method, []).append(r)
    lines = ["# Domain adaptation results", "",
             f"`{' '.join(['python scripts/da_results.py'] + (argv or sys.argv[1:]))}`", "",
             "Target accuracy is measured with target labels (**oracle** information: reported, never used "
             "to choose). Mean +- std over seeds " + ", ".join(map(str, seeds)) + "; final checkpoint.", ""]
    for shift, by_method in rows.items():
        lines += [f"## {shift}", "", "| method | target top-1 (oracle) | source val | SND | IM | DEV | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for method, rs in by_method.items():
            col = lambda k, scale=1.0: f"{scale * np.mean([r[k] for r in rs]):.2f} +- {scale * np.std([r[k] for r in rs]):.2f}"
            lines.append(f"| {method} | {col('target', 100)} | {col('source_val', 100)} | {col('snd')} | {col('im')} | "
                         f"{col('dev')} | {np.mean([r['wall'] for r in rs]):.0f} |")
        lines += ["", "Best method per seed chosen without target labels (target top-1 of the chosen run):", "",
                  "| selection | chosen (per seed) | target top-1 | vs source_only |", "|---|---|---|---|"]
        base = np.mean([r["target"] for r in by_method["source_only"]])
        for crit in CRITERIA + ("oracle",):
            chosen, accs = [], []
            for i in range(len(seeds)):
                if crit == "oracle":
                    key = lambda m: by_method[m][i]["target"]
                else:
                    sign = 1 if SELECTION[crit].higher_is_better else -1
                    key = lambda m: sign * by_method[m][i][crit]
                best = max(by_method, key=key)
                chosen.append(best)
                accs.append(by_method[best][i]["target"])
            label = "oracle (uses target labels)" if crit == "oracle" else crit
            lines.append(f"| {label} | {', '.join(chosen)} | {100 * np.mean(accs):.2f} +- {100 * np.std(accs):.2f} | "
                         f"{100 * (np.mean(accs) - base):+.2f} |")
        lines.append("")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
