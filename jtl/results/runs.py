"""Run discovery: which runs exist under some directories, and their status.

A run directory holds ``config.json`` / ``summary.json`` / ``failed.json`` /
``overrides.json``; a sweep directory's ``sweep.json`` lists its members, present or
not. A run is

* ``finished``: it has ``summary.json``;
* ``failed``: it has ``failed.json`` (or an unreadable file);
* ``missing``: a sweep member with no directory, or a run with no ``summary.json`` yet.

Its ``params`` are its flattened config, ``{"optim.lr": 0.01, ...}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

from jtl.config import loss_mapping
from jtl.errors import ConfigError, DataError

SWEEP_FILE, CONFIG_FILE, SUMMARY_FILE, FAILED_FILE, OVERRIDES_FILE = (
    "sweep.json", "config.json", "summary.json", "failed.json", "overrides.json")
_SKIP_DIRS = {"checkpoints", "predictions", "tensorboard"}


@dataclasses.dataclass
class Run:
    """One run directory (or a sweep member that has none).

    ``status``: ``"finished"`` (has ``summary.json``), ``"failed"`` (``failed.json``) or
    ``"missing"`` (no directory, or no summary yet); ``params``: the flat config
    (``{"optim.lr": 0.01, ...}``), ``reason``: one line for failed and missing runs.
    ``scores`` caches :func:`jtl.results.choose.run_scores` (its reasons for NaN in
    ``score_notes``).
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
        try:
            return os.path.relpath(self.path)
        except ValueError:  # another drive (Windows)
            return str(self.path)


def freeze(v):
    """JSON value -> hashable (lists become tuples, dicts sorted item tuples)."""
    if isinstance(v, list | tuple):
        return tuple(freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, freeze(x)) for k, x in v.items()))
    return v


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> ``{"optim.lr": 0.01, ...}``; lists become (hashable) tuples."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
            if key == "loss":  # the whole method as one key too: --group-by loss compares methods
                out[key] = freeze(v)
        else:
            out[key] = freeze(v)
    return out


def read_json(path: Path, what: str):
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
            over = read_json(path / OVERRIDES_FILE, "overrides file")
        except DataError as e:
            return Run(path, "failed", {}, reason=str(e), sweep=sweep)
        if not isinstance(over, dict):
            return Run(path, "failed", {}, reason=f"{path / OVERRIDES_FILE} is not a JSON object", sweep=sweep)
    params: dict[str, Any] = {}
    if (path / CONFIG_FILE).is_file():
        try:
            cfg = read_json(path / CONFIG_FILE, "config")
            if not isinstance(cfg, dict):
                raise DataError(f"{path / CONFIG_FILE} is not a JSON object")
        except DataError as e:
            return Run(path, "failed", {k: freeze(v) for k, v in (over or {}).items()}, overrides=over,
                       reason=str(e), sweep=sweep)
        if isinstance(cfg.get("loss"), list):  # (name, weight) pairs, as configs were written before the mapping
            with contextlib.suppress(ConfigError):
                cfg["loss"] = loss_mapping(cfg["loss"]).to_dict()
        params = flatten(cfg)
    for k, v in (over or {}).items():  # the resolved config wins; overrides fill in what it lacks
        params.setdefault(k, freeze(v))
    if not path.is_dir():
        return Run(path, "missing", params, overrides=over, reason="no run directory", sweep=sweep)
    if (path / SUMMARY_FILE).is_file():
        try:
            summary = read_json(path / SUMMARY_FILE, "summary")
        except DataError as e:
            return Run(path, "failed", params, overrides=over, reason=str(e), sweep=sweep)
        if not isinstance(summary, dict):
            return Run(path, "failed", params, overrides=over, reason=f"{path / SUMMARY_FILE} is not a JSON object",
                       sweep=sweep)
        return Run(path, "finished", params, summary=summary, overrides=over, sweep=sweep)
    if (path / FAILED_FILE).is_file():
        try:
            failed = read_json(path / FAILED_FILE, "failure record")
            reason = failed.get("error") if isinstance(failed, dict) else failed
            reason = str(reason or "failed (no error recorded)")
        except DataError as e:
            reason = str(e)
        return Run(path, "failed", params, overrides=over, reason=(reason.splitlines() or [""])[0], sweep=sweep)
    return Run(path, "missing", params, overrides=over,
               reason="not finished (no summary.json: running, interrupted or crashed)", sweep=sweep)


def _sweep_members(sweep_dir: Path) -> list[Run]:
    spec = read_json(sweep_dir / SWEEP_FILE, "sweep file")
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
