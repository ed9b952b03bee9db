"""Domain-adaptation results: every method on each shift, several seeds, model selection
without target labels, written to a markdown table (docs/results.md).

For each shift ``configs/da_<shift>.py``: the ``source_only`` runs (one per seed; also
the source warm-ups every method starts from), then each method on every seed, each
through ``jtl sweep`` (a method's seeds train as one vectorized program; finished runs
are skipped, so the script resumes where it stopped; a failed run is left out and said). Per run it reads the final
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ("source_val", "snd", "im", "dev")


def run_method(shift: str, method: str, seeds: list[int], root: Path, warmups: Path | None,
               extra: list[str]) -> dict[int, dict]:
    """``jtl sweep`` of ``method`` over ``seeds`` (one vectorized program; finished runs are skipped):
    {seed: {"workdir", "summary"}} of the runs that finished."""
    from jtl.sweep.runner import run_sweep  # noqa: PLC0415

    arg = f"{method},seeds={':'.join(map(str, seeds))}" + (f",init={warmups}" if warmups else "")
    runs = run_sweep(f"{ROOT}/configs/da_{shift}.py:{arg}", root / shift / method, ["progress=False"] + extra)
    out = {}
    for r in runs:
        if r.status in ("done", "skipped"):
            summary = json.loads((r.workdir / "summary.json").read_text())
            out[int(r.overrides["seed"])] = {"workdir": r.workdir, "summary": summary}
            print(f"{shift} {method} seed {r.overrides['seed']}: target "
                  f"{summary['final']['target_test']['top1']:.4f}", flush=True)
    return out


def link_warmups(shift_dir: Path, finished: dict[int, dict]) -> Path:
    """``shift_dir/source_by_seed/seed<S>`` -> the source-only run of seed S (what da_sweep's init= reads)."""
    links = shift_dir / "source_by_seed"
    links.mkdir(parents=True, exist_ok=True)
    for seed, run in finished.items():
        link = links / f"seed{seed}"
        if not link.exists():
            link.symlink_to(run["workdir"])
    return links


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


def analysis(shift: str, by_method: dict, seed: int, figures: Path, doc_dir: Path) -> list[str]:
    """Proxy A-distance of every method and, for ``seed``, t-SNE plots and per-class target
    accuracy of source_only and of the method IM picks (features: the final predictions)."""
    from jtl.analysis import per_class_table, proxy_a_distance, tsne_plot  # noqa: PLC0415
    from jtl.select import METHODS as SELECTION  # noqa: PLC0415

    def preds(method, label):
        r = next(r for r in by_method[method] if r["seed"] == seed)
        return np.load(r["workdir"] / "predictions" / f"{label}-{r['step']}.npz")

    lines = [f"### {shift}: representations (seed {seed}, final checkpoint)", "",
             "Proxy A-distance between source-val and target-test bottleneck features (a linear domain "
             "classifier's held-out error eps: d_A = 2 (1 - 2 eps); lower = less separable domains):", "",
             "| method | proxy A-distance |", "|---|---:|"]
    for method in by_method:
        if any(r["seed"] == seed for r in by_method[method]):
            d = proxy_a_distance(preds(method, "source_val")["features"], preds(method, "target_test")["features"])
            lines.append(f"| {method} | {d:.3f} |")
    sign = 1 if SELECTION["im"].higher_is_better else -1
    picked = max((m for m in by_method if m != "source_only" and any(r["seed"] == seed for r in by_method[m])),
                 key=lambda m: sign * next(r["im"] for r in by_method[m] if r["seed"] == seed), default=None)
    lines.append("")
    for method in ["source_only"] + ([picked] if picked else []):
        sv, tg = preds(method, "source_val"), preds(method, "target_test")
        png = figures / f"tsne_{shift}_{method}.png"
        tsne_plot(sv["features"], tg["features"], png, source_labels=sv["labels"], target_labels=tg["labels"],
                  title=f"{shift}: {method} (seed {seed})")
        rel = png.relative_to(doc_dir) if png.is_relative_to(doc_dir) else png
        lines += [f"![t-SNE of {method} features]({rel})", "",
                  per_class_table(tg["logits"], tg["labels"], title=f"{shift}: {method}, per-class target accuracy "
                                  "(oracle: uses target labels)"), ""]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shifts", default="fmnist_mnistm,fmnist_invert")
    p.add_argument("--methods", default="all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", default="runs/da")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--override", action="append", default=[], help="extra KEY=VALUE config overrides")
    p.add_argument("--figures", default="", help="also write t-SNE plots here and add proxy A-distances and "
                   "per-class accuracy (first seed: source_only vs the method IM picks)")
    a = p.parse_args(argv)
    from jtl.collect import member_wall_time_s  # noqa: PLC0415
    from jtl.methods import METHODS  # noqa: PLC0415
    from jtl.select import METHODS as SELECTION  # noqa: PLC0415

    methods = list(METHODS) if a.methods == "all" else a.methods.split(",")
    if "source_only" not in methods:
        methods.insert(0, "source_only")
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: dict = {}
    root = Path(a.workdir).absolute()
    for shift in a.shifts.split(","):
        source = run_method(shift, "source_only", seeds, root, None, a.override)
        warmups = link_warmups(root / shift, source)
        for method in methods:
            done = source if method == "source_only" else run_method(shift, method, seeds, root, warmups, a.override)
            for seed in seeds:
                if seed not in done:
                    print(f"{shift} {method} seed {seed}: failed (see its failed.json); left out", flush=True)
                    continue
                s, wd = done[seed]["summary"], done[seed]["workdir"]
                wall = member_wall_time_s(s)
                wall = float("nan") if wall is None else wall
                r = {"seed": seed, "target": s["final"]["target_test"]["top1"], "wall": wall, "workdir": wd,
                     "step": s["step"], **scores(wd, s["step"])}
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
            for seed in seeds:
                cands = {m: r for m, rs in by_method.items() for r in rs if r["seed"] == seed}
                if not cands:
                    continue
                if crit == "oracle":
                    key = lambda m: cands[m]["target"]
                else:
                    sign = 1 if SELECTION[crit].higher_is_better else -1
                    key = lambda m: sign * cands[m][crit]
                best = max(cands, key=key)
                chosen.append(best)
                accs.append(cands[best]["target"])
            label = "oracle (uses target labels)" if crit == "oracle" else crit
            lines.append(f"| {label} | {', '.join(chosen)} | {100 * np.mean(accs):.2f} +- {100 * np.std(accs):.2f} | "
                         f"{100 * (np.mean(accs) - base):+.2f} |")
        lines.append("")
        if a.figures:
            lines += analysis(shift, by_method, seeds[0], Path(a.figures), Path(a.out).parent)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
