"""Metrics of a finished run, read from its ``summary.json``.

``"LABEL/KEY"`` names ``summary["final"][LABEL][KEY]`` (the final evaluation of split
LABEL); accuracies are fractions and shown in percent. A vectorized sweep member records
its group's wall time ``W`` and the group size ``K``: its own share is ``W / K``.
"""

from __future__ import annotations

from typing import Sequence

from jtl.errors import ConfigError
from jtl.results.runs import Run

PERCENT_KEYS = {"top1", "top5", "macro_precision", "macro_recall", "macro_f1"}


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


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Every numeric ``LABEL/KEY`` of the runs' final metrics, sorted."""
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
            avail = available_metrics(finished)
            raise ConfigError(f"no finished run has metric {metric!r}; available: "
                              f"{', '.join(avail[:20]) or 'none (empty summaries)'}")
        return metric
    candidates = ["target_test/top1"] + [m for m in available_metrics(finished) if m.endswith("/top1")]
    for m in candidates:
        if all(metric_value(r.summary, m) is not None for r in finished):
            return m
    raise ConfigError(f"the runs share no LABEL/top1 metric; choose one with --metric "
                      f"(available: {', '.join(available_metrics(finished)[:20]) or 'none'})")


def is_percent(metric: str) -> bool:
    """Accuracies (top1, top5, macro P/R/F1, ``*acc*``) are shown in percent."""
    last = metric.rsplit("/", 1)[-1]
    return last in PERCENT_KEYS or "acc" in last


def member_wall_time_s(summary: dict) -> float | None:
    """A run's own wall time from its ``summary.json``: ``wall_time_s / vectorized_members``
    (a vectorized member records its group's wall time); None if it has none."""
    w = summary.get("wall_time_s")
    if not isinstance(w, int | float) or isinstance(w, bool):
        return None
    return float(w) / max(int(summary.get("vectorized_members", 1)), 1)
