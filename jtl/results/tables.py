"""Tables: a :class:`~jtl.results.report.Report` as markdown, CSV or LaTeX, and the
markdown/LaTeX table writers and number formats that ``scripts/da_results.py`` shares.

A metric is shown as ``mean +- std`` over seeds (``ddof=0``), times 100 for accuracies,
to 2 decimals (4 for other metrics); the gap to the oracle is ``mean_oracle - mean_m``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Callable, Sequence

from jtl.errors import ConfigError
from jtl.results.choose import SelectionRow
from jtl.results.group import Setting, format_seeds, format_value
from jtl.results.report import Report
from jtl.results.runs import Run, freeze


def format_number(x: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """``scale * x`` to ``digits`` decimals; ``-`` for None or NaN."""
    return "-" if x is None or math.isnan(x) else f"{scale * x:.{digits}f}"


def format_pm(mean: float, std: float, scale: float = 1.0, digits: int = 2, sep: str = " +- ") -> str:
    """``"58.31 +- 1.20"`` (``scale`` times each, ``digits`` decimals); ``n/a`` for a NaN mean."""
    if math.isnan(mean):
        return "n/a"
    return f"{format_number(mean, scale, digits)}{sep}{format_number(std, scale, digits)}"


def markdown_table(header: Sequence[str], aligns: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a GitHub markdown table: the header, the rule (``aligns``: ``l`` or ``r`` per
    column, ``|---|`` or ``|---:|``), then the rows; a ``|`` inside a cell is escaped."""
    line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return [line(header), "|" + "".join("---:|" if a == "r" else "---|" for a in aligns), *map(line, rows)]


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(s))


def latex_tabular(header: Sequence[str], aligns: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a booktabs ``tabular``: ``header`` is plain text (escaped here), ``rows`` are TeX."""
    line = lambda cells: " & ".join(cells) + r" \\"  # noqa: E731
    return [r"\begin{tabular}{" + aligns + "}", r"\toprule", line(tex_escape(c) for c in header), r"\midrule",
            *map(line, rows), r"\bottomrule", r"\end{tabular}"]


# --------------------------------------------------------------------------- a report's cells


def _pm(mean: float, std: float, report: Report, sep: str = " +- ") -> str:
    return format_pm(mean, std, report.scale, 2 if report.percent else 4, sep)


def _picks(row: SelectionRow) -> str:
    if not row.picks:
        return "-"
    labels = {lab for _, lab, _ in row.picks}
    if len(labels) == 1:
        return f"{next(iter(labels))} (every seed)"
    return "; ".join(f"seed {format_value(sd)}: {lab}" for sd, lab, _ in row.picks)


def _cells(report: Report, sep: str, bold: Callable[[str], str], esc: Callable[[str], str]):
    """The rows of the settings table and of the selection table: ``esc`` escapes text,
    ``bold`` marks the best mean."""
    best = report.best_index()
    settings = []
    for i, s in enumerate(report.settings):
        keys = [format_value(v) for v in s.key] if report.keys else ["all runs"]
        val = _pm(s.mean(), s.std(), report, sep)
        settings.append([*map(esc, keys), str(len(s.values)), bold(val) if i == best else val, _wall(s)])
    selection = [[esc(r.label), esc(_picks(r)), str(len(r.picks)), _pm(r.mean(), r.std(), report, sep)]
                 for r in report.selection]
    return settings, selection


def _wall(s: Setting) -> str:
    return format_number(s.mean_wall(), 1.0, 0)


def _over(r: Run) -> str:
    if not r.overrides:
        return ""
    return " (" + ", ".join(f"{k}={format_value(freeze(v))}" for k, v in sorted(r.overrides.items())) + ")"


def problem_lines(report: Report) -> list[str]:
    """Missing, failed and metric-less runs, one line each, under a heading per kind."""
    lines = []
    for what, runs in ((f"Missing runs ({len(report.missing)}):", report.missing),
                       (f"Failed runs ({len(report.failed)}):", report.failed)):
        if runs:
            lines += ["", what, ""] + [f"- {r.name}: {r.reason}" + _over(r) for r in runs]
    if report.without_metric:
        lines += ["", f"Finished runs without {report.metric} ({len(report.without_metric)}):", ""]
        lines += [f"- {r.name}" for r in report.without_metric]
    return lines


def _header_lines(report: Report) -> list[str]:
    seeds = {sd for s in report.settings for sd in s.seeds}
    lines = [f"{len(report.finished)} finished runs, {len(report.failed)} failed, {len(report.missing)} missing. "
             f"{report.metric_title}: mean +- std over seeds ({report.seed_key} {format_seeds(seeds)}; std with ddof=0)."]
    if report.keys:
        lines.append(f"One row per setting of {', '.join(report.keys)}.")
    if report.tied_keys:
        lines.append(f"Not grouped by {', '.join(report.tied_keys)} "
                     "(changes only with the seed; --group-by to change).")
    lines += report.notes
    return lines


# --------------------------------------------------------------------------- formats


def render_markdown(report: Report) -> str:
    """The settings table, the selection table, then missing and failed runs."""
    cols = list(report.keys) or ["setting"]
    settings, selection = _cells(report, " +- ", lambda v: f"**{v}**", str)
    lines = [f"# Results: {report.metric_title}", "", *_header_lines(report), "",
             *markdown_table(cols + ["seeds", report.metric_title, "wall s"], "l" * len(cols) + "rrr", settings)]
    if report.selection:
        oracle = report.oracle_mean()
        header = ["selection", "picked", "seeds", report.metric_title]
        if oracle is not None:
            header.append("gap to oracle")
            for r, cells in zip(report.selection, selection):
                cells.append(format_number(oracle - r.mean(), report.scale, 2 if report.percent else 4))
        lines += ["", "Model selection: the setting each method picks on each seed, and the "
                  f"{report.metric} of the picked runs (oracle uses target labels: an upper bound, not a selection).",
                  "", *markdown_table(header, "llrr" + "r" * (len(header) - 4), selection)]
        gaps = []
        for r in report.selection:
            by_why: dict[str, list] = defaultdict(list)
            for seed, why in r.unavailable:
                by_why[why].append(seed)
            gaps += [f"- {r.label} unavailable on {report.seed_key} {format_seeds(sds)}: {why}"
                     for why, sds in by_why.items()]
        if gaps:
            lines += ["", *gaps]
    lines += problem_lines(report)
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
        w.writerow(["settings", "", *[format_value(v) for v in s.key], len(s.values), format_seeds(s.seeds),
                    repr(sc * s.mean()), repr(sc * s.std()), repr(s.mean_wall()), ""])
    for r in report.selection:
        same = {id(s) for s in r.picked}
        picked_key = [format_value(v) for v in r.picked[0].key] if len(same) == 1 else [""] * len(report.keys)
        w.writerow(["selection", r.label, *picked_key, len(r.picks), format_seeds([sd for sd, _, _ in r.picks]),
                    repr(sc * r.mean()), repr(sc * r.std()), "", _picks(r)])
    return buf.getvalue()


def render_latex(report: Report) -> str:
    """Two ``tabular`` environments (booktabs rules): settings, then selection; missing and
    failed runs as ``%`` comments."""
    cols = list(report.keys) or ["setting"]
    settings, selection = _cells(report, r" $\pm$ ", lambda v: r"\textbf{" + v + "}", tex_escape)
    lines = [f"% jtl collect: {line}" for line in _header_lines(report)]
    lines += [r"% needs \usepackage{booktabs}",
              *latex_tabular(cols + ["seeds", report.metric_title, "wall (s)"], "l" * len(cols) + "rrr", settings)]
    if report.selection:
        lines += ["", *latex_tabular(["selection", "picked", "seeds", report.metric_title], "llrr", selection)]
    lines += [f"% {line}" for line in problem_lines(report) if line]
    return "\n".join(lines) + "\n"


FORMATS = {"md": render_markdown, "csv": render_csv, "tex": render_latex}


def render(report: Report, fmt: str = "md") -> str:
    """The report in format ``md``, ``csv`` or ``tex``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: choose md, csv or tex")
    return FORMATS[fmt](report)
