"""An adaptation study of one config file: every method on each seed, scored without target
labels, then the final evaluation (``jtl da-results``; the tables: :mod:`jtl.results.da_report`).

The config is any ``FILE[:ARGS]`` whose ``get_config``/``get_sweep`` follow
configs/da_common.py: ARG ``METHOD,ARGS,seeds=S:S...,init=DIR`` (``init``: ``DIR/seed<S>``
is the source warm-up of seed S). In order, and each step only once all runs are at it:

1. **train** (:func:`train_all`): ``source_only`` per seed (the warm-ups), then each method
   and control from them, each through ``jtl sweep`` (a method's seeds are one vectorized
   program; finished runs are skipped, so a rerun resumes; a failed run is left out and said);
2. **score** (:func:`score_runs`): per run, from its saved predictions at the final step,
   source validation accuracy and DEV (``source_label``), SND, IM and DEV's target side on
   ``select_label`` (default ``target_select``: the unlabelled target training images);
3. **final evaluation** (:func:`final_accuracy`): the target accuracy of every run on
   ``test_label``, a ``data.test`` entry (held out: this is the first time its images are
   read) or, for configs that evaluate it during training, the value in ``summary.json``.

Nothing of step 3 reaches steps 1-2: a choice made by a selection criterion uses only their scores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jtl.errors import ConfigError, JtlError
from jtl.results.da_tables import CONTROLS, CRITERIA
from jtl.results.metrics import member_wall_time_s
from jtl.results.runs import load_run


@dataclasses.dataclass
class Study:
    """One config's study: ``config`` = ``FILE[:ARGS]`` (ARGS without the method), its runs under
    ``root/name/<method>``."""

    config: str
    name: str
    root: Path
    seeds: list[int]
    methods: list[str]
    controls: list[str] = dataclasses.field(default_factory=list)
    overrides: list[str] = dataclasses.field(default_factory=list)
    source_label: str = "source_val"
    select_label: str = "target_select"
    test_label: str = "target_test"

    @property
    def folder(self) -> Path:
        return self.root / self.name

    def config_arg(self, method: str, init: Path | None = None) -> str:
        """``FILE:METHOD,ARGS,seeds=...[,init=DIR]``: what ``jtl sweep`` runs for ``method``."""
        path, _, args = self.config.partition(":")
        parts = [method, *([args] if args else []), f"seeds={':'.join(map(str, self.seeds))}"]
        return f"{path}:{','.join(parts + ([f'init={init}'] if init else []))}"


def default_name(config: str) -> str:
    """``configs/da_fmnist_mnistm.py[:ARGS]`` -> ``fmnist_mnistm`` (the file's stem without ``da_``)."""
    return Path(config.partition(":")[0]).stem.removeprefix("da_")


def _train(study: Study, method: str, warmups: Path | None, extra: list[str], name: str) -> dict[int, Path]:
    """``jtl sweep`` of ``method`` over the seeds into ``folder/name``: {seed: workdir} of the runs
    that finished (now or before)."""
    from jtl.sweep.runner import run_sweep  # noqa: PLC0415

    runs = run_sweep(study.config_arg(method, warmups), study.folder / name,
                     ["progress=False", *study.overrides, *extra])
    out = {int(r.overrides["seed"]): r.workdir for r in runs if r.status in ("done", "skipped")}
    for seed in study.seeds:
        if seed not in out:
            print(f"{study.name} {name} seed {seed}: failed (see its failed.json); left out", flush=True)
    return out


def _link_warmups(study: Study, finished: dict[int, Path]) -> Path:
    """``folder/source_by_seed/seed<S>`` -> the source-only run of seed S (what ``init=`` reads)."""
    links = study.folder / "source_by_seed"
    links.mkdir(parents=True, exist_ok=True)
    for seed, workdir in finished.items():
        link = links / f"seed{seed}"
        if not link.exists():
            link.symlink_to(workdir)
    return links


def train_all(study: Study) -> dict[str, dict[int, Path]]:
    """Step 1: {method or control: {seed: workdir}}, source_only first."""
    runs = {"source_only": _train(study, "source_only", None, [], "source_only")}
    warmups = _link_warmups(study, runs["source_only"])
    for name in [m for m in study.methods if m != "source_only"] + study.controls:
        method, extra = CONTROLS[name] if name in CONTROLS else (name, ())
        runs[name] = _train(study, method, warmups, list(extra), name)
    return runs


def score_runs(study: Study, runs: dict[str, dict[int, Path]]) -> dict[str, list[dict]]:
    """Step 2: {method: [{"seed", "workdir", "step", "wall", "source_val", "snd", "im", "dev"}]}:
    the selection scores from the saved predictions (``select_label`` for the target side)."""
    from jtl.results.choose import run_scores  # noqa: PLC0415

    rows: dict[str, list[dict]] = {}
    for name, by_seed in runs.items():
        for seed in study.seeds:
            if seed not in by_seed:
                continue
            run = load_run(by_seed[seed])
            run_scores(run, CRITERIA, f"{study.test_label}/top1", study.source_label, study.select_label)
            for crit, note in run.score_notes.items():
                print(f"{study.name} {name} seed {seed}: no {crit} score ({note})", flush=True)
            wall = member_wall_time_s(run.summary)
            rows.setdefault(name, []).append({"seed": seed, "workdir": run.path, "step": run.summary["step"],
                                              "wall": float("nan") if wall is None else wall, **run.scores})
    return rows


def _eval_file(workdir: Path, label: str, step: int) -> Path:
    return workdir / f"eval_{label}_step{step}.json"  # as `jtl eval --split LABEL` names it


def final_accuracy(workdir: Path, label: str) -> dict:
    """Step 3 for one run: the metrics of its final checkpoint on eval split ``label``: from
    ``summary.json`` if the run evaluated it while training, else evaluated now (a ``data.test``
    entry, or a ``data.eval`` one) and kept in ``eval_<label>_step<N>.json`` (as ``jtl eval`` does)."""
    from jtl.config import parse_eval, resolve  # noqa: PLC0415
    from jtl.train import runinfo  # noqa: PLC0415

    workdir = Path(workdir)
    summary = json.loads((workdir / "summary.json").read_text())
    if label in summary["final"]:
        return {**summary["final"][label], "evaluated": "during training (data.eval)"}
    cached = _eval_file(workdir, label, summary["step"])
    if cached.is_file():
        return {**json.loads(cached.read_text()), "evaluated": "final evaluation (data.test)"}
    cfg = resolve(runinfo.read_config_json(workdir / "config.json"), recorded=True)
    entries = {**parse_eval(cfg.data.eval), **parse_eval(cfg.data.test, "data.test")}
    if label not in entries:
        raise ConfigError(f"{workdir}: no split labelled {label!r} in data.eval or data.test "
                          f"({', '.join(entries) or 'none'}); pass --test-label")
    from jtl.train.inference import RunModel  # noqa: PLC0415
    from jtl.train.tasks import load_source  # noqa: PLC0415

    run = RunModel(workdir, "latest")
    if run.step != summary["step"]:
        raise JtlError(f"{workdir}: latest checkpoint is step {run.step}, summary.json says {summary['step']}")
    name, split = entries[label]
    result = run.evaluate(load_source(run.cfg, name, split, budget=False, classes=run.classes))
    runinfo.write_json(cached, {"step": run.step, "checkpoint": "latest", **result})
    print(f"{workdir.name}: {label} top1 {result['top1']:.4f} (final evaluation of {name}:{split})", flush=True)
    return {**result, "evaluated": "final evaluation (data.test)"}


def add_final_accuracy(study: Study, rows: dict[str, list[dict]]) -> None:
    """Step 3: ``row["target"]`` (top-1 on ``test_label``) and ``row["final"]`` (its metrics) of every run."""
    for by_method in rows.values():
        for r in by_method:
            r["final"] = final_accuracy(r["workdir"], study.test_label)
            r["target"] = r["final"]["top1"]


def splits_of(workdir: Path) -> dict[str, str]:
    """{eval label: ``NAME:SPLIT``} of a run (data.eval and data.test), for the tables' notes."""
    from jtl.config import parse_eval, resolve  # noqa: PLC0415
    from jtl.train import runinfo  # noqa: PLC0415

    cfg = resolve(runinfo.read_config_json(Path(workdir) / "config.json"), recorded=True)
    out = {label: f"{n}:{s}" for label, (n, s) in parse_eval(cfg.data.eval).items()}
    out.update({label: f"{n}:{s} (held out: data.test)" for label, (n, s) in parse_eval(cfg.data.test).items()})
    out["adapted on"] = f"{cfg.adapt.target}:{cfg.adapt.target_split}" if cfg.adapt.target else "-"
    return out
