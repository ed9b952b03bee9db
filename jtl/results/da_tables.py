"""The tables of ``jtl da-results`` (docs/results.md): one row per adaptation method,
and per model-selection criterion the method it picks on each seed and its gain.

Input: ``{method: [{"seed", "target", "source_val", "snd", "im", "dev", "wall", ...}, ...]}``,
one dict per run. Each method is one :class:`~jtl.results.Setting` (its runs are the seeds)
and the per-seed choice is :func:`~jtl.results.select_settings`'s argmax (argmin for DEV),
as in ``jtl collect``. Controls (:data:`CONTROLS`) are rows, never candidates.
"""

from __future__ import annotations

from pathlib import Path

from jtl.results.choose import SelectionRow, select_settings
from jtl.results.group import Setting, mean_std
from jtl.results.runs import Run
from jtl.results.tables import format_number, format_pm, markdown_table

CRITERIA = ("source_val", "snd", "im", "dev")
TARGET = "target_test/top1"  # the metric: target accuracy (uses target labels)
# control name -> (method it is a variant of, config overrides)
CONTROLS = {"dann_weight0": ("dann", ("loss.dann=0.0",))}


def _setting(method: str, rows: list[dict]) -> Setting:
    """One method's runs as a ``jtl collect`` setting: key ``(method,)``, the target accuracy
    as its metric, and each run's selection scores (``rows``' values) in its score cache."""
    runs = [Run(Path(str(r.get("workdir", method))), "finished", {"method": method, "seed": r["seed"]},
                scores={**{c: r[c] for c in CRITERIA}, "oracle": r["target"]}) for r in rows]
    return Setting((method,), runs, [r["target"] for r in rows], [r["seed"] for r in rows],
                   [r["wall"] for r in rows])


def selection(by_method: dict[str, list[dict]], seeds: list[int], criteria) -> list[SelectionRow]:
    """Per criterion, the method ``jtl collect``'s selection picks on each seed (controls are
    never candidates; ``"oracle"``: target accuracy, uses target labels)."""
    cands = [_setting(m, rs) for m, rs in by_method.items() if m not in CONTROLS]
    return select_settings(cands, ["method"], list(criteria), TARGET, seeds=seeds)


def choose(by_method: dict[str, list[dict]], seed: int, criterion: str) -> str | None:
    """The method whose run of ``seed`` scores best under ``criterion``; None if none ran."""
    (row,) = selection(by_method, [seed], [criterion])
    return row.picked[0].key[0] if row.picked else None


def method_table(by_method: dict[str, list[dict]], select_label: str = "") -> list[str]:
    """One row per method (controls marked): mean +- std over seeds of target accuracy
    (oracle), the selection scores (headed with ``select_label``, the split SND, IM and DEV's
    target side used) and the wall time of a run."""
    rows = []
    for method, rs in by_method.items():
        s = _setting(method, rs)
        label = f"{method} (control: {CONTROLS[method][0]}, {', '.join(CONTROLS[method][1])})" \
            if method in CONTROLS else method
        scores = [format_pm(*mean_std([r.scores[c] for r in s.runs]), 100 if c == "source_val" else 1)
                  for c in CRITERIA]
        rows.append([label, format_pm(s.mean(), s.std(), 100), *scores, format_number(s.mean_wall(), digits=0)])
    on = f" ({select_label})" if select_label else ""
    return markdown_table(["method", "target top-1 (oracle)", "source val", f"SND{on}", f"IM{on}", f"DEV{on}",
                           "wall s"], "l" * 7, rows)


def selection_table(by_method: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    """Per criterion: the method chosen on each seed, the chosen runs' target accuracy (mean +- std)
    and its gain over source-only's mean (and over each control's mean)."""
    controls = [c for c in CONTROLS if c in by_method]
    base = [_setting(m, by_method[m]).mean() for m in ["source_only"] + controls]
    rows = [[row.label, ", ".join(s.key[0] for s in row.picked), format_pm(row.mean(), row.std(), 100),
             *(f"{100 * (row.mean() - b):+.2f}" for b in base)]
            for row in selection(by_method, seeds, CRITERIA + ("oracle",))]
    return markdown_table(["selection", "chosen (per seed)", "target top-1", "vs source_only",
                           *(f"vs {c}" for c in controls)], "l" * (4 + len(controls)), rows)
