"""Test-time adaptation on Fashion-MNIST-C: TENT, EATA and SAR against the source model.

Protocol (docs/test-time.md): per seed, a source model trained on the clean Fashion-MNIST
training set (``configs/da_fmnist_noise.py:source_only``, 700 steps: the domain-adaptation
configs' source-only recipe; trained here when ``--runs/seed<S>`` does not exist yet). The
stream of each corruption: Fashion-MNIST test images corrupted at ``--severity``
(``fashion_mnist:<kind>@<s>``; ``--split all``: the 10,000, ``test``: a seeded half), in stored
order, in batches of ``--batch-size``; every corruption starts from the source model (continual
within a corruption). Reported: online top-1 (%) of each method on the same images (a remainder
making no full batch is left out of every row), mean +- std over seeds. ``norm`` is TENT at lr 0:
test-batch BatchNorm statistics alone (Schneider et al. 2020), the share no update brings.
Per seed and setting the numbers are kept in ``RUNS/seed<S>/tta_*.json``: the script resumes.

    .venv/bin/python scripts/tta_results.py --runs runs/tta/source --seeds 0,1,2 --out results_tta.md

Everything goes through the library calls ``jtl eval --adapt`` makes (jtl.tta.command.run_adapt's
Adapter and stream); one Adapter per seed and method, so each update step compiles once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORRUPTIONS = ("noise", "shot", "impulse", "blur", "contrast", "brightness", "pixelate")
METHODS = ("source", "norm", "tent", "eata", "sar")


def train_source(workdir: Path, seed: int, steps: int) -> None:
    if (workdir / "summary.json").exists():
        return
    cmd = [sys.executable, "-m", "jtl.cli", "train", "--config", f"{ROOT}/configs/da_fmnist_noise.py:source_only",
           "--workdir", str(workdir), f"--config.seed={seed}", f"--config.total_steps={steps}",
           "--config.progress=False"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def stream_of(run, corruption: str, severity: int, batch_size: int, split: str):
    from jtl import data as jdata
    from jtl.tta.stream import test_stream

    src = run.classes.align(jdata.load(f"fashion_mnist:{corruption}@{severity}", split))
    batches, _ = test_stream(src, batch_size=batch_size, normalization=run.normalization)
    return list(batches)


def measure_seed(workdir: Path, methods, corruptions, args) -> dict:
    """{method: {corruption: online top-1 %}} for one source run."""
    from jtl.train.inference import RunModel
    from jtl.tta.command import build_adapter, defaults

    run = RunModel(workdir, "latest")
    streams = {c: stream_of(run, c, args.severity, args.batch_size, args.split) for c in corruptions}
    out = {}
    for method in methods:
        t0 = time.time()
        out[method] = {}
        if method == "source":
            for c, batches in streams.items():
                correct = sum(int(np.sum(np.argmax(run.logits(x), -1) == y)) for x, y in batches)
                out[method][c] = 100.0 * correct / sum(len(y) for _, y in batches)
            continue
        settings = defaults("tent" if method == "norm" else method, batch_size=args.batch_size,
                            lr=0.0 if method == "norm" else args.lr, fisher_alpha=args.fisher_alpha)
        adapter = build_adapter(run, settings)
        for c, batches in streams.items():
            res = adapter.run(batches)
            out[method][c] = 100.0 * float(np.mean(np.argmax(res["logits"], -1) == res["labels"]))
            if res["resets"]:
                print(f"  {method} {c}: {res['resets']} recoveries", flush=True)
        assert adapter.compilations == 1, adapter.compilations
        print(f"{workdir.name} {method}: mean {np.mean(list(out[method].values())):.2f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    return out


def table(per_seed: dict, methods, corruptions) -> str:
    cols = list(corruptions) + ["mean"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        cells = []
        have = [r[m] for r in per_seed.values() if m in r]
        for c in cols:
            vals = [np.mean(list(r.values())) if c == "mean" else r[c] for r in have]
            cells.append(f"{np.mean(vals):.1f} +- {np.std(vals):.1f}")
        label = m if len(have) == len(per_seed) else f"{m} ({len(have)} of {len(per_seed)} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    gains = [np.mean(list(r["tent"].values())) - np.mean(list(r["source"].values())) for r in per_seed.values()
             if "tent" in r and "source" in r]
    if gains:
        lines.append(f"\nTENT - source, mean over corruptions: {np.mean(gains):+.1f} +- {np.std(gains):.1f} points "
                     f"(per seed: {', '.join(f'{g:+.1f}' for g in gains)}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs/tta/source", help="source runs: RUNS/seed<S>")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--severity", type=int, default=5)
    p.add_argument("--split", default="all", help="all: the 10,000 test images; test: a seeded half of them")
    p.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.005, help="SGD lr (momentum 0.9) of tent/eata/sar")
    p.add_argument("--fisher-alpha", type=float, default=2000.0)
    p.add_argument("--source-steps", type=int, default=700)
    p.add_argument("--table-only", action="store_true", help="measure nothing: the table of what is measured")
    p.add_argument("--out", type=Path, help="markdown table (and a .json of every number beside it)")
    args = p.parse_args(argv)
    methods, corruptions = args.methods.split(","), args.corruptions.split(",")
    per_seed = {}
    for s in (int(x) for x in args.seeds.split(",")):
        workdir = args.runs / f"seed{s}"
        # one file per seed and setting: a finished seed is read back, so the script resumes
        setting = f"{args.split}_sev{args.severity}_b{args.batch_size}_lr{args.lr}_fa{args.fisher_alpha}"
        cache = workdir / f"tta_{setting}.json"
        done = json.loads(cache.read_text()) if cache.exists() else {}
        missing = [m for m in methods if not all(c in done.get(m, {}) for c in corruptions)]
        if missing and not args.table_only:
            train_source(workdir, s, args.source_steps)
            done.update(measure_seed(workdir, missing, corruptions, args))
            cache.write_text(json.dumps(done, indent=2))
        per_seed[s] = done
    text = table(per_seed, methods, corruptions)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "per_seed": per_seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
