"""Grouping finished runs into *settings* and their mean +- std over seeds.

A setting is the runs that share the values of the group keys (the config keys that vary,
the seed excepted). Over its ``n`` seeds' metric values ``v_i``:

    mean = (1/n) sum_i v_i,    std = sqrt((1/n) sum_i (v_i - mean)^2)

(numpy's default ``ddof=0``, as in docs/results.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from jtl.results.metrics import member_wall_time_s, metric_value
from jtl.results.runs import Run

#: Config keys that never define a setting (they do not change results); with the seed key.
NEUTRAL_KEYS = ("progress", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "save_predictions")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, std)`` of ``values`` with ``ddof=0``; ``(nan, nan)`` for none."""
    if not len(values):
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values))


class MeanStd:
    """``mean()`` and ``std()`` (``ddof=0``) over seeds of ``self.values``."""

    values: Sequence[float]

    def mean(self) -> float:
        return mean_std(self.values)[0]

    def std(self) -> float:
        return mean_std(self.values)[1]


def sort_key(v):
    """A total order over config values: numbers (NaN last among them), then strings and
    bools, then lists, then None."""
    if v is None:
        return (3, "")
    if isinstance(v, bool):
        return (1, str(v))
    if isinstance(v, int | float):
        return (0, float(v)) if not math.isnan(v) else (0, math.inf)
    if isinstance(v, str):
        return (1, v)
    if isinstance(v, tuple):
        return (2, tuple(sort_key(x) for x in v))
    return (2, (json.dumps(v, default=str),))


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


def format_seeds(seeds: Iterable) -> str:
    """``"0 1 2"``: the seeds, sorted."""
    return " ".join(format_value(s) for s in sorted(seeds, key=sort_key))


def _varying(runs: Sequence[Run], keys: Iterable[str]) -> list[str]:
    return [k for k in sorted(keys) if len({r.params.get(k) for r in runs}) > 1]


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


@dataclasses.dataclass
class Setting(MeanStd):
    """One row: the values of the group keys and the finished runs that share them.
    ``values`` are the raw metric values (fractions for accuracies), in ``runs`` order."""

    key: tuple
    runs: list[Run]
    values: list[float]
    seeds: list[Any]
    wall_times: list[float]

    def mean_wall(self) -> float:
        return mean_std(self.wall_times)[0]

    def label(self, keys: Sequence[str], only: Sequence[str] | None = None) -> str:
        """``"k=v, ..."`` over ``keys`` (the setting's key order), or over ``only`` of them."""
        pairs = [(k, v) for k, v in zip(keys, self.key) if only is None or k in only]
        return ", ".join(f"{k}={format_value(v)}" for k, v in pairs) or "all runs"

    def run_of(self, seed) -> tuple[Run, float] | None:
        """The (first) run of ``seed`` and its metric value; None if the setting has none."""
        if seed not in self.seeds:
            return None
        i = self.seeds.index(seed)
        return self.runs[i], self.values[i]


def identifying_keys(settings: Sequence, keys: Sequence[str]) -> list[str]:
    """The fewest of ``keys`` (greedy, in order on ties) whose values tell ``settings`` apart
    (anything with a ``key`` tuple): short labels for picks and legends when several keys
    vary together."""
    chosen: list[str] = []
    idx = {k: i for i, k in enumerate(keys)}
    distinct = lambda ks: len({tuple(st.key[idx[k]] for k in ks) for st in settings})
    target = distinct(list(keys))
    while distinct(chosen) < target:
        chosen.append(max((k for k in keys if k not in chosen), key=lambda k: distinct(chosen + [k])))
    return [k for k in keys if k in chosen]


def aggregate(runs: Sequence[Run], keys: Sequence[str], metric: str, seed_key: str = "seed", *,
              sort: bool = True) -> list[Setting]:
    """Group finished runs that have ``metric`` by ``keys``; settings sorted by key values
    (``sort=False``: in the order of their first run)."""
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
    order = sorted(groups, key=lambda t: tuple(sort_key(v) for v in t)) if sort else groups
    return [groups[k] for k in order]
