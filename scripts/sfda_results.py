"""Source-free adaptation results: SHOT and NRC against the source model they start from, with
each method's zero-weight control, on a Fashion-MNIST shift (docs/source-free.md).

1. The source models: ``configs/da_<shift>.py:source_only`` on every seed (one ``jtl sweep``;
   finished runs are skipped, so the script resumes where it stopped).
2. Each method through ``jtl sweep`` of ``configs/sfda_fmnist.py:METHOD,controls=1``: seed S
   starts from seed S's source run, and each seed's zero-weight control (every loss weight 0:
   only target BatchNorm statistics and weight decay move the model) trains in the same
   vectorized program.
3. A markdown table of final target-test top-1 (mean +- std over seeds, and per seed): the
   source model (its own final evaluation of the same target test split), the method, its
   control, and the method's gain over the source model. Target labels are used only here,
   to score; no run reads them, and no choice is made with them (final checkpoints).

    .venv/bin/python scripts/sfda_results.py --methods shot,nrc --seeds 0,1,2 \\
        --workdir runs/sfda --out sfda_results.md --source-override total_steps=700 --sequential --shared-control
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"fmnist_mnistm": "fashion_mnist:mnistm", "fmnist_invert": "fashion_mnist:invert",
           "fmnist_noise": "fashion_mnist:noise@3"}


def finished(runs) -> list:
    return [r for r in runs if r.status in ("done", "skipped")]


def top1(workdir: Path) -> float:
    return json.loads((Path(workdir) / "summary.json").read_text())["final"]["target_test"]["top1"]


def source_models(shift: str, seeds: list[int], root: Path, extra: list[str]) -> dict[int, Path]:
    """The source-only run of each seed (trained unless finished), linked as ``source_by_seed/seed<S>``."""
    from jtl.sweep.runner import run_sweep  # noqa: PLC0415

    runs = run_sweep(f"{ROOT}/configs/da_{shift}.py:source_only,seeds={':'.join(map(str, seeds))}",
                     root / shift / "source_only", ["progress=False"] + extra)
    links = root / shift / "source_by_seed"
    links.mkdir(parents=True, exist_ok=True)
    out = {}
    for r in finished(runs):
        seed = int(r.overrides["seed"])
        link = links / f"seed{seed}"
        if not link.exists():
            link.symlink_to(r.workdir.absolute())
        out[seed] = link
    return out


def adapt(shift: str, method: str, seeds: list[int], root: Path, sources: Path, extra: list[str],
          vectorize: bool, controls: bool = True) -> dict:
    """``{"method": {seed: top1}, "control": {seed: top1}}`` of the method's sweep (with its controls)."""
    from jtl.sweep.runner import run_sweep  # noqa: PLC0415

    arg = (f"{method},init={sources},controls={int(controls) or ''},target={TARGETS[shift]},"
           f"seeds={':'.join(map(str, seeds))}")
    runs = run_sweep(f"{ROOT}/configs/sfda_fmnist.py:{arg}", root / shift / method, ["progress=False"] + extra,
                     vectorize=vectorize)
    out: dict[str, dict[int, float]] = {"method": {}, "control": {}}
    for r in finished(runs):
        kind = "control" if any(k.startswith("loss.") for k in r.overrides) else "method"
        out[kind][int(r.overrides["seed"])] = top1(r.workdir)
    return out


def cell(values: dict[int, float]) -> str:
    if not values:
        return "—"
    v = 100 * np.array(list(values.values()))
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def table(shift: str, source: dict[int, float], results: dict[str, dict]) -> list[str]:
    seeds = sorted(source)
    lines = [f"Target test top-1 (%), {TARGETS[shift]}, mean ± std over seeds {', '.join(map(str, seeds))} "
             "(final checkpoints; per seed in brackets):", "",
             "| method | source model | method | zero-weight control | method − source |", "|---|---|---|---|---|"]
    for method, res in results.items():
        gain = {s: res["method"][s] - source[s] for s in res["method"] if s in source}
        per_seed = lambda d: "[" + ", ".join(f"{100 * d[s]:.1f}" for s in sorted(d)) + "]"
        lines.append(f"| {method} | {cell(source)} {per_seed(source)} | {cell(res['method'])} {per_seed(res['method'])} "
                     f"| {cell(res['control'])} {per_seed(res['control'])} | {cell(gain)} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shift", default="fmnist_mnistm", choices=sorted(TARGETS))
    p.add_argument("--methods", default="shot,nrc")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", default="runs/sfda")
    p.add_argument("--out", default="sfda_results.md")
    p.add_argument("--source-override", action="append", default=[], help="KEY=VALUE for the source runs")
    p.add_argument("--sources", help="use these source runs (DIR/seed<S>) instead of training them")
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE for the adaptation runs")
    p.add_argument("--shared-control", action="store_true",
                   help="train the zero-weight controls with the first method only and show them beside every "
                        "method: with every loss weight 0 no piece moves the model, so the controls are the same runs")
    p.add_argument("--sequential", action="store_true",
                   help="adaptation runs one after another (on a CPU faster than one vectorized program)")
    args = p.parse_args(argv)
    seeds, root = [int(s) for s in args.seeds.split(",")], Path(args.workdir)
    if args.sources:  # source runs made elsewhere: DIR/seed<S>
        sources = {s: Path(args.sources) / f"seed{s}" for s in seeds if (Path(args.sources) / f"seed{s}").is_dir()}
    else:
        sources = source_models(args.shift, seeds, root, args.source_override)
    source = {s: top1(sources[s]) for s in seeds if s in sources}
    links = Path(args.sources) if args.sources else root / args.shift / "source_by_seed"
    results = {}
    for i, m in enumerate(args.methods.split(",")):
        results[m] = adapt(args.shift, m, sorted(source), root, links, args.override, not args.sequential,
                           controls=i == 0 or not args.shared_control)
        if args.shared_control:
            results[m]["control"] = results[next(iter(results))]["control"]
    lines = table(args.shift, source, results)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
