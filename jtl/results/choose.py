"""Choosing a setting per seed by a model-selection criterion, as a user without target
labels would.

For criterion ``m`` (a :data:`jtl.select.METHODS` entry) and seed ``s``, among the
settings ``k`` that have a run of seed ``s``:

    pick_m(s) = argmax_k  sign_m * score_m(run_{k,s})    (sign_m = -1 where lower is better)

NaN scores never win; ties go to the earliest setting. The reported value is the mean
+- std over seeds of the metric of the picked runs. ``oracle`` scores a run by the metric
itself: it uses target labels, an upper bound rather than a selection. The scores come
from the run's saved predictions; the criteria themselves are in :mod:`jtl.select`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jtl.errors import ConfigError, DataError
from jtl.results.group import MeanStd, Setting, identifying_keys, sort_key
from jtl.results.metrics import metric_value
from jtl.results.runs import Run

#: Selection methods computed by default (``jtl.select.METHODS``).
DEFAULT_SELECT = ("source_val", "dev", "snd", "im", "oracle")


def check_methods(methods: Sequence[str]) -> None:
    """A :class:`ConfigError` naming the first method that :data:`jtl.select.METHODS` lacks."""
    from jtl.select import METHODS  # noqa: PLC0415

    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown selection method {m!r}: choose from {', '.join(METHODS)} (or none)")


def _load_predictions(run: Run, label: str, step) -> dict:
    path = run.path / "predictions" / f"{label}-{step}.npz"
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__})") from None


def run_scores(run: Run, methods: Sequence[str], metric: str, source_label: str = "source_val",
               target_label: str | None = None) -> dict[str, float]:
    """Selection scores of one finished run (cached on ``run.scores``; NaN where unavailable,
    with the reason in ``run.score_notes``).

    From the saved predictions at the final step (``predictions/<label>-<step>.npz``, written
    with ``save_predictions=True``): ``source_val`` = source validation accuracy, ``snd`` and
    ``im`` on the target logits of ``target_label`` (default: the metric's label; an unlabelled
    split such as ``target_select`` keeps the test images out of selection), ``dev`` with the first half of the
    source validation set fitting the density ratio and the second half validated. Without
    predictions, ``source_val`` falls back to ``summary["final"][source_label]["top1"]``.
    ``oracle`` is the run's ``metric`` itself (target labels).
    """
    from jtl import select as S  # noqa: PLC0415

    check_methods(methods)
    target_label = target_label or metric.split("/", 1)[0]
    loaded: dict[str, dict] = {}  # each file read once per call, not kept afterwards

    def load(label: str) -> dict:
        if label not in loaded:
            loaded[label] = _load_predictions(run, label, run.summary.get("step"))
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
            else:  # dev
                sv = load(source_label)
                tg = load(target_label)
                half = len(sv["labels"]) // 2  # half fits the density ratio, the other half is validated
                losses = S.per_sample_cross_entropy(sv["logits"][half:], sv["labels"][half:])
                value = S.dev_risk(sv["features"][:half], tg["features"], sv["features"][half:], losses)
        except FileNotFoundError as e:
            note = f"no predictions ({Path(str(e)).name}; train with save_predictions=True)"
        except (DataError, KeyError) as e:  # NaN logits of a diverged run, a damaged file
            note = f"{type(e).__name__}: {e}".splitlines()[0]
        run.scores[m] = float(value)
        if note:
            run.score_notes[m] = note
    return {m: run.scores[m] for m in methods}


@dataclasses.dataclass
class SelectionRow(MeanStd):
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


def select_settings(settings: Sequence[Setting], keys: Sequence[str], methods: Sequence[str], metric: str,
                    seed_key: str = "seed", source_label: str = "source_val",
                    seeds: Sequence | None = None, target_label: str | None = None) -> list[SelectionRow]:
    """For each method and each seed, the setting ``jtl.select.select`` picks among the
    settings that have a run of that seed; NaN scores (no predictions, a diverged run)
    never win, and a seed where no setting has a score is reported as unavailable.
    ``seeds``: the seeds to pick on, in this order (default: every seed, sorted); a seed
    that no setting has is skipped. ``target_label``: the eval split SND, IM and DEV score
    (default: the metric's; :func:`run_scores`)."""
    from jtl import select as S  # noqa: PLC0415

    check_methods(methods)
    if seeds is None:
        seeds = sorted({sd for s in settings for sd in s.seeds}, key=sort_key)
    short = identifying_keys(settings, keys)
    for s in settings:  # every score of a run in one pass over its prediction files
        for run in s.runs:
            run_scores(run, methods, metric, source_label, target_label)
    rows = []
    for m in methods:
        info = S.METHODS[m]
        row = SelectionRow(m, "oracle (uses target labels)" if info.uses_target_labels else m,
                           info.uses_target_labels, [], [])
        for seed in seeds:
            cands = [(s, *s.run_of(seed)) for s in settings if seed in s.seeds]
            if not cands:
                continue
            try:
                res = S.select([{"id": s.label(keys, short), "scores": {m: run.scores[m]}}
                                for s, run, _ in cands], m)
            except DataError:
                notes = {run.score_notes.get(m) for _, run, _ in cands} - {None}
                row.unavailable.append((seed, "; ".join(sorted(notes)) or "no score"))
                continue
            s, _, v = cands[res.best_index]
            row.picks.append((seed, s.label(keys, short), v))
            row.picked.append(s)
        rows.append(row)
    return rows
