"""DomainBed's model selection (Gulrajani & Lopez-Paz 2021, sec. 3) over finished DG runs.

A run is one (algorithm, held-out domains ``test``, hyperparameter draw ``h``, trial seed); its
*records* are its evaluations (step -> {eval label: top-1}), from ``metrics.jsonl``; a SWAD run
has one record, its averaged model (``summary["swad"]``). For held-out domain ``t`` and a trial
seed, each method picks a (draw, record) among the runs holding out only ``t`` and reports that
record's ``test_<t>`` accuracy:

- ``train_val`` (training-domain validation): the highest mean accuracy over the source
  domains' val splits, over every draw and every evaluation;
- ``lodo`` (leave-one-domain-out cross-validation): draw ``h``'s score at an evaluation step is
  the mean, over the other domains ``j``, of the accuracy on ``j`` (its test split) of the run
  that held out ``t`` and ``j`` with the same draw and seed; highest over draws and steps
  (needs those runs: ``lodo=1`` in configs/dg_rotated_fmnist.py's sweep);
- ``oracle`` (test-domain validation, an upper bound that peeks at the held-out domain): each
  draw's last evaluation, scored by the held-out domain's val split (images apart from its
  test split).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jtl.errors import ConfigError
from jtl.results.runs import read_json

METHODS = {
    "train_val": "Training-domain validation",
    "lodo": "Leave-one-domain-out cross-validation",
    "oracle": "Test-domain validation (oracle: selects with held-out-domain labels)",
}


@dataclasses.dataclass
class DGRun:
    workdir: Path
    algorithm: str
    test: tuple[int, ...]
    hparams: int
    seed: int
    names: tuple[str, ...]
    records: list[tuple[object, dict[str, float]]]  # (step, {label: top1}), in step order

    @property
    def train_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.names)) if i not in self.test)

    def acc(self, record: dict, split: str, domain: int) -> float | None:
        return record.get(f"{split}_{self.names[domain]}")


def _records(workdir: Path, summary: dict) -> list[tuple[object, dict]]:
    if "swad" in summary:
        return [("swad", {k: m["top1"] for k, m in summary["swad"]["final"].items()})]
    out = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        acc = {k[:-5]: v for k, v in row.items() if k.endswith("/top1") and k.split("_")[0] in ("val", "test")}
        if acc:
            out.append((row["step"], acc))
    return out


def load_runs(dirs) -> tuple[list[DGRun], list[Path]]:
    """The finished DG runs under ``dirs`` (searched recursively) and the unfinished ones' workdirs."""
    runs, unfinished = [], []
    for d in dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"no such directory: {d}")
        for cfg_file in sorted(Path(d).rglob("config.json")):
            cfg = read_json(cfg_file, "config")
            dg = cfg.get("dg") or {}
            if not dg.get("domains"):
                continue
            wd = cfg_file.parent
            if not (wd / "summary.json").exists():
                unfinished.append(wd)
                continue
            summary = read_json(wd / "summary.json", "summary")
            names = tuple(dg.get("names") or [f"d{i}" for i in range(len(dg["domains"]))])
            runs.append(DGRun(wd, dg.get("algorithm") or "+".join(cfg["loss"]), tuple(dg["test"]),
                              int(dg.get("hparams_seed", 0)), int(cfg["seed"]), names, _records(wd, summary)))
    return runs, unfinished


def _train_val(run: DGRun, record: dict) -> float | None:
    vals = [run.acc(record, "val", d) for d in run.train_ids]
    return None if any(v is None for v in vals) else float(np.mean(vals))


def select(runs: list[DGRun], method: str, algorithm: str, test: int, seed: int) -> float | None:
    """The held-out accuracy ``method`` reports for (algorithm, held-out domain ``test``, seed); None
    when the runs it needs are missing."""
    single = [r for r in runs if r.algorithm == algorithm and r.test == (test,) and r.seed == seed]
    best = None  # (score, reported accuracy)
    for run in sorted(single, key=lambda r: r.hparams):
        if method == "oracle":
            candidates = [(run.acc(run.records[-1][1], "val", test), run.records[-1][1])] if run.records else []
        elif method == "train_val":
            candidates = [(_train_val(run, rec), rec) for _, rec in run.records]
        elif method == "lodo":
            candidates = _lodo_candidates(runs, run)
        else:
            raise ConfigError(f"unknown DG selection method {method!r}; known: {', '.join(METHODS)}")
        for score, record in candidates:
            reported = run.acc(record, "test", test)
            if score is not None and reported is not None and (best is None or score > best[0]):
                best = (score, reported)
    return None if best is None else best[1]


def _lodo_candidates(runs: list[DGRun], run: DGRun) -> list[tuple[float | None, dict]]:
    """(leave-one-domain-out score, record) for each evaluation of ``run``."""
    t = run.test[0]
    partners = {}
    for j in run.train_ids:
        match = [r for r in runs if r.algorithm == run.algorithm and r.hparams == run.hparams and r.seed == run.seed
                 and set(r.test) == {t, j}]
        if not match:
            return []
        partners[j] = dict(match[0].records)
    out = []
    for step, record in run.records:
        accs = [partners[j].get(step, {}).get(f"test_{run.names[j]}") for j in partners]
        out.append((None if any(a is None for a in accs) else float(np.mean(accs)), record))
    return out


@dataclasses.dataclass
class Table:
    """One selection method's table: ``cells[algorithm][domain]`` = per-seed accuracies (0..1)."""

    method: str
    domains: list[int]
    names: tuple[str, ...]
    cells: dict[str, dict[int, list[float]]]
    seeds: list[int]


def tables(runs: list[DGRun], methods=tuple(METHODS)) -> list[Table]:
    """DomainBed's tables: rows algorithms (in :data:`jtl.methods.DG_METHODS` order), columns the
    held-out domains."""
    if not runs:
        raise ConfigError("no finished domain-generalization runs (config.json with dg.domains and summary.json)")
    names = runs[0].names
    from jtl.methods import DG_METHODS  # noqa: PLC0415

    order = {name: i for i, name in enumerate(DG_METHODS)}  # jtl's algorithms in their order, others after
    algorithms = sorted(dict.fromkeys(r.algorithm for r in runs), key=lambda a: order.get(a, len(order)))
    domains = sorted({r.test[0] for r in runs if len(r.test) == 1})
    seeds = sorted({r.seed for r in runs})
    out = []
    for method in methods:
        cells = {a: {t: [v for s in seeds if (v := select(runs, method, a, t, s)) is not None] for t in domains}
                 for a in algorithms}
        out.append(Table(method, domains, names, cells, seeds))
    return out


def render_markdown(table: Table) -> str:
    """``| Algorithm | <domain>... | Avg |`` in %: mean ± std over trial seeds (sample std, ddof 1);
    Avg is the mean of the per-domain means; ``X`` where a cell has no run."""
    head = ["Algorithm", *[table.names[t] for t in table.domains], "Avg"]
    lines = [f"**{METHODS[table.method]}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for algorithm, row in table.cells.items():
        cells, means = [], []
        for t in table.domains:
            v = np.asarray(row[t]) * 100
            if len(v) == 0:
                cells.append("X")
                continue
            means.append(v.mean())
            cells.append(f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}")
        avg = f"{np.mean(means):.1f}" if len(means) == len(table.domains) else "X"
        lines.append("| " + " | ".join([algorithm, *cells, avg]) + " |")
    n = {len(v) for row in table.cells.values() for v in row.values()}
    lines += ["", f"(trial seeds per cell: {', '.join(map(str, sorted(n)))})"]
    if n == {0} and table.method == "lodo":
        lines[-1] = "(no leave-one-domain-out runs: sweep with lodo=1 to fill this table)"
    return "\n".join(lines) + "\n"


def report(dirs, methods=tuple(METHODS)) -> str:
    """Every selection method's table, markdown, and the unfinished runs."""
    runs, unfinished = load_runs(dirs)
    parts = [render_markdown(t) for t in tables(runs, methods)]
    if unfinished:
        parts.append(f"{len(unfinished)} unfinished runs: " + ", ".join(str(p) for p in unfinished[:10]) + "\n")
    return "\n".join(parts)
