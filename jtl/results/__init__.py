"""Results of many runs: ``jtl collect``'s steps, one module per job.

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

* :mod:`~jtl.results.runs`: :func:`discover`, :func:`load_run` (statuses);
* :mod:`~jtl.results.metrics`: :func:`metric_value`, :func:`member_wall_time_s`;
* :mod:`~jtl.results.group`: :func:`default_group_keys`, :func:`aggregate` (mean +- std);
* :mod:`~jtl.results.choose`: :func:`run_scores`, :func:`select_settings` (a pick per seed);
* :mod:`~jtl.results.report`: :func:`collect`, all of the above -> a :class:`Report`;
* :mod:`~jtl.results.tables`: :func:`render` as markdown / CSV / LaTeX;
* :mod:`~jtl.results.plots`: :func:`plot`; :mod:`~jtl.results.cli`: ``jtl collect``.

    jtl collect runs/sweep_lr --metric target_test/top1 --out results.md --plot optim.lr --plot-out lr.png
"""

from jtl.results.choose import DEFAULT_SELECT, SelectionRow, check_methods, run_scores, select_settings
from jtl.results.cli import add_parser
from jtl.results.group import (NEUTRAL_KEYS, Setting, aggregate, default_group_keys, format_seeds, format_value,
                               identifying_keys, mean_std)
from jtl.results.metrics import choose_metric, is_percent, member_wall_time_s, metric_value
from jtl.results.plots import plot
from jtl.results.report import Report, collect
from jtl.results.runs import Run, discover, flatten, load_run
from jtl.results.tables import (FORMATS, format_number, format_pm, latex_tabular, markdown_table, render, render_csv,
                                render_latex, render_markdown, tex_escape)

__all__ = [
    "DEFAULT_SELECT", "FORMATS", "NEUTRAL_KEYS", "Report", "Run", "SelectionRow", "Setting", "add_parser",
    "aggregate", "check_methods", "choose_metric", "collect", "default_group_keys", "discover", "flatten",
    "format_number", "format_pm", "format_seeds", "format_value", "identifying_keys", "is_percent",
    "latex_tabular", "load_run", "markdown_table", "mean_std", "member_wall_time_s", "metric_value", "plot",
    "render", "render_csv", "render_latex", "render_markdown", "run_scores", "select_settings", "tex_escape",
]
