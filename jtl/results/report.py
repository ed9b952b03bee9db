"""All steps together: discover -> group -> choose, the :class:`Report` behind ``jtl collect``."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

from jtl.errors import ConfigError, DataError
from jtl.results.choose import DEFAULT_SELECT, SelectionRow, check_methods, select_settings
from jtl.results.group import Setting, aggregate, default_group_keys, format_seeds, sort_key
from jtl.results.metrics import choose_metric, is_percent, metric_value
from jtl.results.runs import Run, discover


@dataclasses.dataclass
class Report:
    """Everything :func:`jtl.results.tables.render` needs."""

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


def collect(dirs: Sequence[str | os.PathLike], *, metric: str | None = None, group_by: Sequence[str] | None = None,
            seed_key: str = "seed", select: Sequence[str] = DEFAULT_SELECT,
            source_label: str = "source_val", target_label: str | None = None) -> Report:
    """Discover, group, aggregate and select: the :class:`Report` behind ``jtl collect``.

    ``group_by=None`` groups by :func:`default_group_keys`; ``[]`` puts every run in one
    row. Raises :class:`jtl.errors.DataError` when no run has finished.
    """
    check_methods(select)
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
        dup = sorted({sd for sd in s.seeds if s.seeds.count(sd) > 1}, key=sort_key)
        if dup:
            notes.append(f"Setting {s.label(keys)} has several runs of {seed_key} {format_seeds(dup)}: "
                         "all are averaged, the first is used for selection.")
    selection = select_settings(settings, keys, list(select), metric, seed_key, source_label,
                                target_label=target_label) \
        if len(settings) > 1 and select else []
    return Report(metric, is_percent(metric), list(keys), settings, selection, finished, failed, missing,
                  tied, without, notes, seed_key)
