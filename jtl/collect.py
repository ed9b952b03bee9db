"""``jtl collect``: one results table from many run directories.

Runs are found under the given directories: a sweep directory (``sweep.json``: its
members, finished or not), a single run directory (``config.json`` / ``summary.json``
/ ``failed.json``) or any folder holding such directories. Finished runs (those with a
``summary.json``) are grouped into *settings* by the config keys that vary across them
(the seed excepted), and each setting gets the metric's mean and standard deviation
over its seeds. With more than one setting, every selection method of
:mod:`jtl.select` then picks one setting per seed, as a user without target labels
would, and the table reports the metric of the picks (``oracle`` uses target labels
and says so). Missing runs (sweep members without a directory or a ``summary.json``)
and failed runs (``failed.json``) are listed below the tables.

Every step is a plain function: :func:`discover` -> :func:`aggregate` ->
:func:`select_settings` -> :func:`render_markdown` / :func:`render_csv` /
:func:`render_latex`, and :func:`plot` for a PNG of the metric against one swept key;
:func:`collect` runs them all and returns a :class:`Report`.

    jtl collect runs/sweep_lr --metric target_test/top1 --out results.md --plot optim.lr --plot-out lr.png
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from jtl.errors import ConfigError, DataError

__all__ = [
    "Report",
    "Run",
    "SelectionRow",
    "Setting",
    "add_parser",
    "aggregate",
    "collect",
    "default_group_keys",
    "discover",
    "flatten",
    "metric_value",
    "plot",
    "render",
    "render_csv",
    "render_latex",
    "render_markdown",
    "run_scores",
    "select_settings",
]

SWEEP_FILE, CONFIG_FILE, SUMMARY_FILE, FAILED_FILE, OVERRIDES_FILE = (
    "sweep.json", "config.json", "summary.json", "failed.json", "overrides.json")
#: Config keys that never define a setting (they do not change results); with the seed key.
NEUTRAL_KEYS = ("progress", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "save_predictions")
#: Selection methods computed by default (``jtl.select.METHODS``).
DEFAULT_SELECT = ("source_val", "dev", "snd", "im", "oracle")
_SKIP_DIRS = {"checkpoints", "predictions", "tensorboard"}
_PERCENT_KEYS = {"top1", "top5", "macro_precision", "macro_recall", "macro_f1"}


# --------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Run:
    """One run directory (or a sweep member that has none).

    ``status``: ``"finished"`` (has ``summary.json``), ``"failed"`` (``failed.json``) or
    ``"missing"`` (no directory, or no summary yet); ``params``: the flat config
    (``{"optim.lr": 0.01, ...}``), ``reason``: one line for failed and missing runs.
    """

    path: Path
    status: str
    params: dict[str, Any]
    summary: dict | None = None
    overrides: dict | None = None
    reason: str | None = None
    sweep: Path | None = None
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    score_notes: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return _display_path(self.path)


def _display_path(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:  # another drive (Windows)
        return str(p)


def _freeze(v):
    """JSON value -> hashable (lists become tuples, dicts sorted item tuples)."""
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> ``{"optim.lr": 0.01, ...}``; lists become (hashable) tuples."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = _freeze(v)
    return out


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        "; repair or remove it") from None


def _is_run_dir(d: Path) -> bool:
    return any((d / f).is_file() for f in (CONFIG_FILE, SUMMARY_FILE, FAILED_FILE, OVERRIDES_FILE))


def load_run(path: Path, *, overrides: dict | None = None, sweep: Path | None = None) -> Run:
    """Read one run directory (or note that it is missing)."""
    path = Path(path)
    over = overrides
    if over is None and (path / OVERRIDES_FILE).is_file():
        try:
            over = _read_json(path / OVERRIDES_FILE, "overrides file")
        except DataError as e:
            return Run(path, "failed", {}, reason=str(e), sweep=sweep)
        if not isinstance(over, dict):
            return Run(path, "failed", {}, reason=f"{path / OVERRIDES_FILE} is not a JSON object", sweep=sweep)
    params: dict[str, Any] = {}
    if (path / CONFIG_FILE).is_file():
        try:
            cfg = _read_json(path / CONFIG_FILE, "config")
            if not isinstance(cfg, dict):
                raise DataError(f"{path / CONFIG_FILE} is not a JSON object")
        except DataError as e:
            return Run(path, "failed", {k: _freeze(v) for k, v in (over or {}).items()}, overrides=over,
                       reason=str(e), sweep=sweep)
        params = flatten(cfg)
    for k, v in (over or {}).items():  # the resolved config wins; overrides fill in what it lacks
        params.setdefault(k, _freeze(v))
    if not path.is_dir():
        return Run(path, "missing", params, overrides=over, reason="no run directory", sweep=sweep)
    if (path / SUMMARY_FILE).is_file():
        try:
            summary = _read_json(path / SUMMARY_FILE, "summary")
        except DataError as e:
            return Run(path, "failed", params, overrides=over, reason=str(e), sweep=sweep)
        if not isinstance(summary, dict):
            return Run(path, "failed", params, overrides=over, reason=f"{path / SUMMARY_FILE} is not a JSON object",
                       sweep=sweep)
        return Run(path, "finished", params, summary=summary, overrides=over, sweep=sweep)
    if (path / FAILED_FILE).is_file():
        try:
            failed = _read_json(path / FAILED_FILE, "failure record")
            reason = failed.get("error") if isinstance(failed, dict) else failed
            reason = str(reason or "failed (no error recorded)")
        except DataError as e:
            reason = str(e)
        return Run(path, "failed", params, overrides=over, reason=(reason.splitlines() or [""])[0], sweep=sweep)
    return Run(path, "missing", params, overrides=over,
               reason="not finished (no summary.json: running, interrupted or crashed)", sweep=sweep)


def _sweep_members(sweep_dir: Path) -> list[Run]:
    spec = _read_json(sweep_dir / SWEEP_FILE, "sweep file")
    members = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(members, list):
        raise DataError(f"sweep file {sweep_dir / SWEEP_FILE} has no 'members' list; is it a jtl sweep?")
    runs = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not (m.get("name") or m.get("workdir")):
            raise DataError(f"sweep file {sweep_dir / SWEEP_FILE}: member #{i} has neither 'name' nor 'workdir'")
        wd = Path(m.get("workdir") or m["name"])
        wd = wd if wd.is_absolute() else sweep_dir / wd
        runs.append(load_run(wd, overrides=m.get("overrides") or None, sweep=sweep_dir))
    return runs


def discover(dirs: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run under ``dirs``: sweep members (from ``sweep.json``, present or not) and
    run directories found by walking the folders; each run once, in a stable order."""
    runs: list[Run] = []
    seen: set[str] = set()

    def add(run: Run) -> None:
        key = os.path.realpath(run.path)
        if key not in seen:
            seen.add(key)
            runs.append(run)

    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise DataError(f"{root} does not exist; pass run, sweep or results directories")
        if not root.is_dir():
            raise DataError(f"{root} is not a directory; pass run, sweep or results directories")
        walked: set[str] = set()
        for here, subdirs, _ in os.walk(root, followlinks=True):
            here_p = Path(here)
            walked.add(os.path.realpath(here_p))
            subdirs[:] = sorted(s for s in subdirs if s not in _SKIP_DIRS and not s.startswith(".")
                                and os.path.realpath(here_p / s) not in walked)  # no symlink loops
            if (here_p / SWEEP_FILE).is_file():
                for run in _sweep_members(here_p):
                    add(run)
            if _is_run_dir(here_p):
                if os.path.realpath(here_p) not in seen:
                    add(load_run(here_p))
                subdirs[:] = []  # runs do not nest
    return runs


# --------------------------------------------------------------------------- grouping


def metric_value(summary: dict, metric: str) -> float | None:
    """``"target_test/top1"`` -> ``summary["final"]["target_test"]["top1"]`` (else a top-level
    ``summary`` path such as ``"wall_time_s"``); None if absent."""
    for node in (summary.get("final") or {}, summary):
        v = node
        for part in metric.split("/"):
            if not isinstance(v, dict) or part not in v:
                v = None
                break
            v = v[part]
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def _available_metrics(runs: Sequence[Run]) -> list[str]:
    names = set()
    for r in runs:
        for label, m in ((r.summary or {}).get("final") or {}).items():
            if isinstance(m, dict):
                names.update(f"{label}/{k}" for k, v in m.items() if isinstance(v, int | float))
    return sorted(names)


def choose_metric(runs: Sequence[Run], metric: str | None) -> str:
    """``metric``, or by default ``target_test/top1`` if the runs have it, else the first
    ``LABEL/top1`` that every run has."""
    finished = [r for r in runs if r.status == "finished"]
    if metric:
        if not any(metric_value(r.summary, metric) is not None for r in finished):
            avail = _available_metrics(finished)
            raise ConfigError(f"no finished run has metric {metric!r}; available: "
                              f"{', '.join(avail[:20]) or 'none (empty summaries)'}")
        return metric
    candidates = ["target_test/top1"] + [m for m in _available_metrics(finished) if m.endswith("/top1")]
    for m in candidates:
        if all(metric_value(r.summary, m) is not None for r in finished):
            return m
    raise ConfigError(f"the runs share no LABEL/top1 metric; choose one with --metric "
                      f"(available: {', '.join(_available_metrics(finished)[:20]) or 'none'})")


def is_percent(metric: str) -> bool:
    """Accuracies (top1, top5, macro P/R/F1, ``*acc*``) are shown in percent."""
    last = metric.rsplit("/", 1)[-1]
    return last in _PERCENT_KEYS or "acc" in last


def _sort_key(v):
    if v is None:
        return (3, "")
    if isinstance(v, bool):
        return (1, str(v))
    if isinstance(v, int | float):
        return (0, float(v)) if not math.isnan(v) else (0, math.inf)
    if isinstance(v, str):
        return (1, v)
    if isinstance(v, tuple):
        return (2, tuple(_sort_key(x) for x in v))
    return (2, (json.dumps(v, default=str),))


def _varying(runs: Sequence[Run], keys: Iterable[str]) -> list[str]:
    out = []
    for k in sorted(keys):
        vals = {r.params.get(k) for r in runs}
        if len(vals) > 1:
            out.append(k)
    return out


def default_group_keys(runs: Sequence[Run], seed_key: str = "seed") -> tuple[list[str], list[str]]:
    """The config keys that define a setting: those that vary across ``runs``, except the
    seed, :data:`NEUTRAL_KEYS`, and string keys tied to the seed (a per-seed ``model.init``
    path: within each group of the other keys it is constant or changes exactly with the
    seed). Returns ``(keys, tied_keys)``."""
    neutral = set(NEUTRAL_KEYS) | {seed_key}
    keys = [k for k in _varying(runs, {k for r in runs for k in r.params}) if k not in neutral]
    seeds = {r.params.get(seed_key) for r in runs}
    if len(seeds) < 2:
        return keys, []
    strings = [k for k in keys if all(isinstance(r.params.get(k), str | None) for r in runs)]
    others = [k for k in keys if k not in strings]
    tied = []
    for k in strings:
        groups: dict[tuple, list[Run]] = defaultdict(list)
        for r in runs:
            groups[tuple(r.params.get(o) for o in others)].append(r)
        ok, splits = True, False
        for g in groups.values():
            by_value, by_seed = defaultdict(set), defaultdict(set)
            for r in g:
                by_value[r.params.get(k)].add(r.params.get(seed_key))
                by_seed[r.params.get(seed_key)].add(r.params.get(k))
            if len(by_value) == 1:
                continue
            if all(len(s) == 1 for s in by_value.values()) and all(len(s) == 1 for s in by_seed.values()):
                splits = True
            else:
                ok = False
                break
        if ok and splits:
            tied.append(k)
    return [k for k in keys if k not in tied], tied


def format_value(v) -> str:
    """A config value for a table cell: strings as they are, numbers short, lists as JSON."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, int | str):
        return str(v)
    return json.dumps(_thaw(v), separators=(",", ":"), default=str)


def _thaw(v):
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


@dataclasses.dataclass
class Setting:
    """One row: the values of the group keys and the finished runs that share them.
    ``values`` are the raw metric values (fractions for accuracies), in ``runs`` order."""

    key: tuple
    runs: list[Run]
    values: list[float]
    seeds: list[Any]
    wall_times: list[float]

    def mean(self) -> float:
        return float(np.mean(self.values))

    def std(self) -> float:
        """Standard deviation over seeds (numpy's default ``ddof=0``, as in docs/results.md)."""
        return float(np.std(self.values))

    def mean_wall(self) -> float:
        return float(np.mean(self.wall_times)) if self.wall_times else math.nan

    def label(self, keys: Sequence[str], only: Sequence[str] | None = None) -> str:
        """``"k=v, ..."`` over ``keys`` (the setting's key order), or over ``only`` of them."""
        pairs = [(k, v) for k, v in zip(keys, self.key) if only is None or k in only]
        return ", ".join(f"{k}={format_value(v)}" for k, v in pairs) or "all runs"


def identifying_keys(settings: Sequence[Setting], keys: Sequence[str]) -> list[str]:
    """The fewest of ``keys`` (greedy, in order on ties) whose values tell ``settings`` apart:
    short labels for picks and legends when several keys vary together."""
    chosen: list[str] = []
    idx = {k: i for i, k in enumerate(keys)}
    distinct = lambda ks: len({tuple(st.key[idx[k]] for k in ks) for st in settings})
    target = distinct(list(keys))
    while distinct(chosen) < target:
        chosen.append(max((k for k in keys if k not in chosen), key=lambda k: distinct(chosen + [k])))
    return [k for k in keys if k in chosen]


def member_wall_time_s(summary: dict) -> float | None:
    """A run's own wall time from its ``summary.json``: ``wall_time_s / vectorized_members``
    (a vectorized member records its group's wall time); None if it has none."""
    w = summary.get("wall_time_s")
    if not isinstance(w, int | float) or isinstance(w, bool):
        return None
    return float(w) / max(int(summary.get("vectorized_members", 1)), 1)


def aggregate(runs: Sequence[Run], keys: Sequence[str], metric: str, seed_key: str = "seed") -> list[Setting]:
    """Group finished runs that have ``metric`` by ``keys``; settings sorted by key values."""
    groups: dict[tuple, Setting] = {}
    for r in runs:
        if r.status != "finished":
            continue
        v = metric_value(r.summary, metric)
        if v is None:
            continue
        key = tuple(r.params.get(k) for k in keys)
        s = groups.setdefault(key, Setting(key, [], [], [], []))
        s.runs.append(r)
        s.values.append(v)
        s.seeds.append(r.params.get(seed_key))
        w = member_wall_time_s(r.summary)
        if w is not None:
            s.wall_times.append(w)
    return [groups[k] for k in sorted(groups, key=lambda t: tuple(_sort_key(v) for v in t))]


# --------------------------------------------------------------------------- selection


def _load_predictions(run: Run, label: str, step) -> dict:
    path = run.path / "predictions" / f"{label}-{step}.npz"
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__})") from None


def run_scores(run: Run, methods: Sequence[str], metric: str, source_label: str = "source_val") -> dict[str, float]:
    """Selection scores of one finished run (cached on ``run.scores``; NaN where unavailable,
    with the reason in ``run.score_notes``).

    From the saved predictions at the final step (``predictions/<label>-<step>.npz``, written
    with ``save_predictions=True``), as ``scripts/da_results.py`` does: ``source_val`` = source
    validation accuracy, ``snd`` and ``im`` on the target logits, ``dev`` with one half of the
    source validation set fitting the density ratio and the other half validated. Without
    predictions, ``source_val`` falls back to ``summary["final"][source_label]["top1"]``.
    ``oracle`` is the run's ``metric`` itself (target labels).
    """
    from jtl import select as S  # noqa: PLC0415

    target_label = metric.split("/", 1)[0]
    step = run.summary.get("step")
    loaded: dict[str, dict] = {}  # each file read once per call, not kept afterwards

    def load(label: str) -> dict:
        if label not in loaded:
            loaded[label] = _load_predictions(run, label, step)
        return loaded[label]

    for m in [m for m in methods if m not in run.scores]:
        value, note = math.nan, None
        try:
            if m == "oracle":
                v = metric_value(run.summary, metric)
                value = math.nan if v is None else v
            elif m == "source_val":
                try:
                    sv = load(source_label)
                    value = S.source_val_accuracy(sv["logits"], sv["labels"])
                except FileNotFoundError:
                    v = metric_value(run.summary, f"{source_label}/top1")
                    if v is None:
                        note = f"no {source_label} predictions or metric"
                    else:
                        value = v
            elif m in ("snd", "im"):
                tg = load(target_label)
                value = S.snd(tg["logits"]) if m == "snd" else S.information_maximization_score(tg["logits"])
            elif m == "dev":
                sv = load(source_label)
                tg = load(target_label)
                half = len(sv["labels"]) // 2  # half fits the density ratio, the other half is validated
                losses = S.per_sample_cross_entropy(sv["logits"][half:], sv["labels"][half:])
                value = S.dev_risk(sv["features"][:half], tg["features"], sv["features"][half:], losses)
            else:
                raise ConfigError(f"unknown selection method {m!r}: choose from {', '.join(S.METHODS)}")
        except FileNotFoundError as e:
            note = f"no predictions ({Path(str(e)).name}; train with save_predictions=True)"
        except (DataError, KeyError) as e:  # NaN logits of a diverged run, a damaged file
            note = f"{type(e).__name__}: {e}".splitlines()[0]
        run.scores[m] = float(value)
        if note:
            run.score_notes[m] = note
    return {m: run.scores[m] for m in methods}


@dataclasses.dataclass
class SelectionRow:
    """The pick of one selection method on each seed and the metric of the picked runs."""

    method: str
    label: str
    uses_target_labels: bool
    picks: list[tuple[Any, str, float]]  # (seed, setting label, metric value)
    unavailable: list[tuple[Any, str]]  # (seed, why)
    picked: list[Setting] = dataclasses.field(default_factory=list)  # parallel to picks

    @property
    def values(self) -> list[float]:
        return [v for _, _, v in self.picks]

    def mean(self) -> float:
        return float(np.mean(self.values)) if self.picks else math.nan

    def std(self) -> float:
        return float(np.std(self.values)) if self.picks else math.nan


def select_settings(settings: Sequence[Setting], keys: Sequence[str], methods: Sequence[str], metric: str,
                    seed_key: str = "seed", source_label: str = "source_val") -> list[SelectionRow]:
    """For each method and each seed, the setting ``jtl.select.select`` picks among the
    settings that have a run of that seed; NaN scores (no predictions, a diverged run)
    never win, and a seed where no setting has a score is reported as unavailable."""
    from jtl import select as S  # noqa: PLC0415

    for m in methods:
        if m not in S.METHODS:
            raise ConfigError(f"unknown selection method {m!r}: choose from {', '.join(S.METHODS)}")
    seeds = sorted({sd for s in settings for sd in s.seeds}, key=_sort_key)
    short = identifying_keys(settings, keys)
    for s in settings:  # every score of a run in one pass over its prediction files
        for run in s.runs:
            run_scores(run, methods, metric, source_label)
    rows = []
    for m in methods:
        info = S.METHODS[m]
        row = SelectionRow(m, "oracle (uses target labels)" if info.uses_target_labels else m,
                           info.uses_target_labels, [], [])
        for seed in seeds:
            cands = []
            for s in settings:
                if seed in s.seeds:
                    i = s.seeds.index(seed)
                    run = s.runs[i]
                    score = run_scores(run, [m], metric, source_label)[m]
                    cands.append((s, s.values[i], {"id": s.label(keys, short), "scores": {m: score}}))
            try:
                res = S.select([c[2] for c in cands], m)
            except DataError:
                notes = {c[0].runs[c[0].seeds.index(seed)].score_notes.get(m) for c in cands} - {None}
                row.unavailable.append((seed, "; ".join(sorted(notes)) or "no score"))
                continue
            s, v, _ = cands[res.best_index]
            row.picks.append((seed, s.label(keys, short), v))
            row.picked.append(s)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class Report:
    """Everything :func:`render` needs."""

    metric: str
    percent: bool
    keys: list[str]
    settings: list[Setting]
    selection: list[SelectionRow]
    finished: list[Run]
    failed: list[Run]
    missing: list[Run]
    tied_keys: list[str] = dataclasses.field(default_factory=list)
    without_metric: list[Run] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seed_key: str = "seed"

    @property
    def scale(self) -> float:
        return 100.0 if self.percent else 1.0

    @property
    def metric_title(self) -> str:
        return f"{self.metric} (%)" if self.percent else self.metric

    def best_index(self) -> int | None:
        """The setting with the highest mean, for accuracies (higher is better) only."""
        if not self.percent:
            return None
        means = [s.mean() for s in self.settings]
        ok = [i for i, m in enumerate(means) if not math.isnan(m)]
        return max(ok, key=lambda i: means[i]) if len(ok) > 1 else None

    def oracle_mean(self) -> float | None:
        for r in self.selection:
            if r.uses_target_labels and r.picks:
                return r.mean()
        return None


def _fmt(x: float, scale: float, digits: int) -> str:
    return "-" if x is None or math.isnan(x) else f"{scale * x:.{digits}f}"


def _pm(mean: float, std: float, report: Report, sep: str = " +- ") -> str:
    if math.isnan(mean):
        return "n/a"
    d = 2 if report.percent else 4
    return f"{_fmt(mean, report.scale, d)}{sep}{_fmt(std, report.scale, d)}"


def _wall(s: Setting) -> str:
    return _fmt(s.mean_wall(), 1.0, 0)


def _seeds(seeds) -> str:
    return " ".join(format_value(s) for s in sorted(seeds, key=_sort_key))


def _picks(row: SelectionRow) -> str:
    if not row.picks:
        return "-"
    labels = {lab for _, lab, _ in row.picks}
    if len(labels) == 1:
        return f"{next(iter(labels))} (every seed)"
    return "; ".join(f"seed {format_value(sd)}: {lab}" for sd, lab, _ in row.picks)


def _problem_lines(report: Report) -> list[str]:
    lines = []
    if report.missing:
        lines += ["", f"Missing runs ({len(report.missing)}):", ""]
        lines += [f"- {r.name}: {r.reason}" + _over(r) for r in report.missing]
    if report.failed:
        lines += ["", f"Failed runs ({len(report.failed)}):", ""]
        lines += [f"- {r.name}: {r.reason}" + _over(r) for r in report.failed]
    if report.without_metric:
        lines += ["", f"Finished runs without {report.metric} ({len(report.without_metric)}):", ""]
        lines += [f"- {r.name}" for r in report.without_metric]
    return lines


def _over(r: Run) -> str:
    if not r.overrides:
        return ""
    return " (" + ", ".join(f"{k}={format_value(_freeze(v))}" for k, v in sorted(r.overrides.items())) + ")"


def _header_lines(report: Report) -> list[str]:
    seeds = sorted({sd for s in report.settings for sd in s.seeds}, key=_sort_key)
    lines = [f"{len(report.finished)} finished runs, {len(report.failed)} failed, {len(report.missing)} missing. "
             f"{report.metric_title}: mean +- std over seeds ({report.seed_key} {_seeds(seeds)}; std with ddof=0)."]
    if report.keys:
        lines.append(f"One row per setting of {', '.join(report.keys)}.")
    if report.tied_keys:
        lines.append(f"Not grouped by {', '.join(report.tied_keys)} "
                     "(changes only with the seed; --group-by to change).")
    lines += report.notes
    return lines


def render_markdown(report: Report) -> str:
    """The settings table, the selection table, then missing and failed runs."""
    cols = list(report.keys) or ["setting"]
    lines = [f"# Results: {report.metric_title}", "", *_header_lines(report), "",
             "| " + " | ".join(cols + ["seeds", report.metric_title, "wall s"]) + " |",
             "|" + "---|" * len(cols) + "---:|---:|---:|"]
    best = report.best_index()
    for i, s in enumerate(report.settings):
        cells = [format_value(v) for v in s.key] if report.keys else ["all runs"]
        pm = _pm(s.mean(), s.std(), report)
        lines.append("| " + " | ".join([c.replace("|", "\\|") for c in cells]
                                       + [str(len(s.values)), f"**{pm}**" if i == best else pm, _wall(s)]) + " |")
    if report.selection:
        oracle = report.oracle_mean()
        lines += ["", "Model selection: the setting each method picks on each seed, and the "
                  f"{report.metric} of the picked runs (oracle uses target labels: an upper bound, not a selection).",
                  "", f"| selection | picked | seeds | {report.metric_title} |"
                  + (" gap to oracle |" if oracle is not None else ""),
                  "|---|---|---:|---:|" + ("---:|" if oracle is not None else "")]
        for r in report.selection:
            cells = [r.label, _picks(r).replace("|", "\\|"), str(len(r.picks)), _pm(r.mean(), r.std(), report)]
            if oracle is not None:
                cells.append(_fmt(oracle - r.mean(), report.scale, 2 if report.percent else 4) if r.picks else "-")
            lines.append("| " + " | ".join(cells) + " |")
        gaps = []
        for r in report.selection:
            by_why: dict[str, list] = defaultdict(list)
            for seed, why in r.unavailable:
                by_why[why].append(seed)
            gaps += [f"- {r.label} unavailable on {report.seed_key} {_seeds(sds)}: {why}"
                     for why, sds in by_why.items()]
        if gaps:
            lines += ["", *gaps]
    lines += _problem_lines(report)
    return "\n".join(lines) + "\n"


CSV_COLUMNS_HEAD = ("table", "selection")
CSV_COLUMNS_TAIL = ("n", "seeds", "mean", "std", "wall_time_s", "picked")


def render_csv(report: Report) -> str:
    """One long table: ``table`` = ``settings`` (one row per setting) or ``selection`` (one
    row per method); the group keys; ``n``, ``seeds``, ``mean`` and ``std`` of the metric (in
    percent for accuracies, full precision), mean ``wall_time_s``; ``picked`` per seed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_COLUMNS_HEAD, *report.keys, *CSV_COLUMNS_TAIL])
    sc = report.scale
    for s in report.settings:
        w.writerow(["settings", "", *[format_value(v) for v in s.key], len(s.values), _seeds(s.seeds),
                    repr(sc * s.mean()), repr(sc * s.std()), repr(s.mean_wall()), ""])
    for r in report.selection:
        same = {id(s) for s in r.picked}
        picked_key = [format_value(v) for v in r.picked[0].key] if len(same) == 1 else [""] * len(report.keys)
        w.writerow(["selection", r.label, *picked_key, len(r.picks), _seeds([sd for sd, _, _ in r.picks]),
                    repr(sc * r.mean()), repr(sc * r.std()), "", _picks(r)])
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(s))


def render_latex(report: Report) -> str:
    """Two ``tabular`` environments (booktabs rules): settings, then selection; missing and
    failed runs as ``%`` comments."""
    cols = list(report.keys) or ["setting"]
    pm = r" $\pm$ "
    lines = [f"% jtl collect: {line}" for line in _header_lines(report)]
    lines += [r"% needs \usepackage{booktabs}",
              r"\begin{tabular}{" + "l" * len(cols) + "rrr}", r"\toprule",
              " & ".join(tex_escape(c) for c in cols + ["seeds", report.metric_title, "wall (s)"]) + r" \\",
              r"\midrule"]
    best = report.best_index()
    for i, s in enumerate(report.settings):
        cells = [format_value(v) for v in s.key] if report.keys else ["all runs"]
        val = _pm(s.mean(), s.std(), report, pm)
        if i == best:
            val = r"\textbf{" + val + "}"
        lines.append(" & ".join([tex_escape(c) for c in cells] + [str(len(s.values)), val, _wall(s)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if report.selection:
        lines += ["", r"\begin{tabular}{llrr}", r"\toprule",
                  " & ".join(tex_escape(c) for c in ["selection", "picked", "seeds", report.metric_title]) + r" \\",
                  r"\midrule"]
        for r in report.selection:
            lines.append(" & ".join([tex_escape(r.label), tex_escape(_picks(r)), str(len(r.picks)),
                                     _pm(r.mean(), r.std(), report, pm)]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {line}" for line in _problem_lines(report) if line]
    return "\n".join(lines) + "\n"


FORMATS = {"md": render_markdown, "csv": render_csv, "tex": render_latex}


def render(report: Report, fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: choose md, csv or tex")
    return FORMATS[fmt](report)


# --------------------------------------------------------------------------- plot


@dataclasses.dataclass(frozen=True)
class _Keyed:
    key: tuple


def plot(runs: Sequence[Run], x_key: str, keys: Sequence[str], metric: str, path: str | os.PathLike,
         seed_key: str = "seed") -> Path:
    """PNG of the metric (mean +- std over seeds) against config key ``x_key``, one line per
    setting of the other ``keys``; log x axis for positive numbers spanning >= 100x.
    Written to a temporary file and renamed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    finished = [r for r in runs if r.status == "finished"]
    if not any(x_key in r.params for r in finished):
        raise ConfigError(f"--plot key {x_key!r} is not a config key of the runs (keys look like optim.lr)")
    if len({r.params.get(x_key) for r in finished}) < 2:
        raise ConfigError(f"--plot key {x_key!r} does not vary across the runs (always "
                          f"{format_value(finished[0].params.get(x_key))}); plot a swept key")
    series_keys = [k for k in keys if k != x_key]
    settings = aggregate(finished, [*series_keys, x_key], metric, seed_key)
    xs_all = [s.key[-1] for s in settings]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs_all)
    cats = sorted(set(xs_all), key=_sort_key)
    scale = 100.0 if is_percent(metric) else 1.0
    series: dict[tuple, list[Setting]] = defaultdict(list)
    for s in settings:
        series[s.key[:-1]].append(s)

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    short = identifying_keys([_Keyed(k) for k in series], series_keys)
    for skey, ss in series.items():
        x = [float(s.key[-1]) if numeric else cats.index(s.key[-1]) for s in ss]
        y = [scale * s.mean() for s in ss]
        e = [scale * s.std() for s in ss]
        label = ", ".join(f"{k}={format_value(v)}" for k, v in zip(series_keys, skey) if k in short) or None
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
    if numeric:
        pos = [float(v) for v in xs_all]
        if min(pos) > 0 and max(pos) / min(pos) >= 100:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(cats)), [format_value(c) for c in cats], rotation=20, ha="right")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{metric} (%)" if scale == 100.0 else metric)
    n = sorted({len(s.values) for s in settings})
    ax.set_title(f"{metric}: mean +- std over {'/'.join(map(str, n))} seed(s)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    if series_keys:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()

    from jtl.plotting import save_png  # noqa: PLC0415

    return save_png(fig, path)


# --------------------------------------------------------------------------- all together


def collect(dirs: Sequence[str | os.PathLike], *, metric: str | None = None, group_by: Sequence[str] | None = None,
            seed_key: str = "seed", select: Sequence[str] = DEFAULT_SELECT,
            source_label: str = "source_val") -> Report:
    """Discover, group, aggregate and select: the :class:`Report` behind ``jtl collect``.

    ``group_by=None`` groups by :func:`default_group_keys`; ``[]`` puts every run in one
    row. Raises :class:`jtl.errors.DataError` when no run has finished.
    """
    from jtl.select import METHODS  # noqa: PLC0415

    for m in select:
        if m not in METHODS:
            raise ConfigError(f"unknown selection method {m!r}: choose from {', '.join(METHODS)} (or none)")
    runs = discover(dirs)
    finished = [r for r in runs if r.status == "finished"]
    failed = [r for r in runs if r.status == "failed"]
    missing = [r for r in runs if r.status == "missing"]
    where = ", ".join(map(str, dirs))
    if not finished:
        if not runs:
            raise DataError(f"no runs under {where} (no sweep.json, config.json or summary.json found)")
        first = (failed or missing)[0]
        raise DataError(f"no finished run under {where}: {len(failed)} failed, {len(missing)} missing "
                        f"(first: {first.name}: {first.reason})")
    metric = choose_metric(finished, metric)
    with_metric = [r for r in finished if metric_value(r.summary, metric) is not None]
    without = [r for r in finished if metric_value(r.summary, metric) is None]
    tied: list[str] = []
    if group_by is None:
        keys, tied = default_group_keys(with_metric, seed_key)
    else:
        keys = list(group_by)
        known = {k for r in with_metric for k in r.params}
        unknown = [k for k in keys if k not in known]
        if unknown:
            varying, _ = default_group_keys(with_metric, seed_key)
            raise ConfigError(f"--group-by key {unknown[0]!r} is in no run's config; keys that vary: "
                              f"{', '.join(varying) or 'none'}")
    settings = aggregate(with_metric, keys, metric, seed_key)
    notes = []
    for s in settings:
        dup = sorted({sd for sd in s.seeds if s.seeds.count(sd) > 1}, key=_sort_key)
        if dup:
            notes.append(f"Setting {s.label(keys)} has several runs of {seed_key} {_seeds(dup)}: "
                         "all are averaged, the first is used for selection.")
    selection = select_settings(settings, keys, list(select), metric, seed_key, source_label) \
        if len(settings) > 1 and select else []
    return Report(metric, is_percent(metric), list(keys), settings, selection, finished, failed, missing,
                  tied, without, notes, seed_key)


def _write_text(path: Path, text: str) -> None:
    from jtl.fileio import atomic_write_text  # noqa: PLC0415

    atomic_write_text(path, text)  # atomic, and readable as the umask allows (not mkstemp's 0600)


def _split_list(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = [p.strip() for v in values for p in v.split(",") if p.strip()]
    return [] if out in ([], ["none"]) else out


def add_parser(sub) -> None:
    p = sub.add_parser(
        "collect", help="one results table (and plot) from many runs or sweeps",
        description="Collect finished runs under DIR... into one table: mean +- std over seeds per setting, "
                    "the setting each model-selection method picks, missing and failed runs.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run, sweep or results directories (searched recursively)")
    p.add_argument("--metric", help="LABEL/KEY of summary.json's final metrics (default: target_test/top1 if "
                   "every run has it, else the first shared LABEL/top1)")
    p.add_argument("--group-by", action="append", metavar="KEY[,KEY...]",
                   help="config keys that define a setting (default: the keys that vary, except the seed); "
                        "'none': one row")
    p.add_argument("--seed-key", default="seed", help="config key of the seed (default: seed)")
    p.add_argument("--select", default=",".join(DEFAULT_SELECT),
                   help="selection methods, comma separated, or 'none' (default: %(default)s)")
    p.add_argument("--source-label", default="source_val", help="eval label of the source validation split")
    p.add_argument("--format", choices=sorted(FORMATS), help="md, csv or tex (default: from --out, else md)")
    p.add_argument("--out", help="write the table to this file (default: print it)")
    p.add_argument("--plot", metavar="KEY", help="also plot the metric against this config key")
    p.add_argument("--plot-out", metavar="FILE.png", help="the plot's file (default: collect-KEY.png)")
    p.set_defaults(handler=cmd_collect)


def cmd_collect(args) -> int:
    import sys  # noqa: PLC0415

    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lower().lstrip(".") if args.out else ""
        fmt = {"markdown": "md", "txt": "md"}.get(suffix, suffix) if suffix in (*FORMATS, "markdown", "txt") else "md"
    if args.plot_out and not args.plot:
        raise ConfigError("--plot-out needs --plot KEY (the config key on the x axis)")
    select = _split_list([args.select]) or []
    report = collect(args.dirs, metric=args.metric, group_by=_split_list(args.group_by), seed_key=args.seed_key,
                     select=select, source_label=args.source_label)
    text = render(report, fmt)
    plot_path = None
    if args.plot:
        plot_path = plot(report.finished, args.plot, report.keys, report.metric,
                         args.plot_out or f"collect-{args.plot.replace('/', '_')}.png", args.seed_key)
    if args.out:
        _write_text(Path(args.out), text)
        print(f"wrote {args.out} ({len(report.settings)} settings, {len(report.finished)} finished runs)")
    else:
        print(text, end="")
    if plot_path is not None:
        print(f"wrote {plot_path}")
    problems = _problem_lines(report)
    if problems and (args.out or fmt != "md"):
        print("\n".join(problems).lstrip("\n"), file=sys.stderr)
    if report.failed or report.missing:
        print(f"jtl collect: {len(report.failed)} failed and {len(report.missing)} missing runs (listed "
              f"{'above' if args.out or fmt != 'md' else 'below the table'})", file=sys.stderr)
    return 0
