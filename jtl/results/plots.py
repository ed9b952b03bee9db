"""A PNG of the metric against one swept config key: ``mean +- std`` over seeds as error
bars (``ddof=0``), one line per setting of the other group keys."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from jtl.errors import ConfigError
from jtl.results.group import Setting, aggregate, format_value, identifying_keys, sort_key
from jtl.results.metrics import is_percent
from jtl.results.runs import Run


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
    cats = sorted(set(xs_all), key=sort_key)
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
