"""``jtl collect``'s command line: ``add_parser`` registers it under ``jtl``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from jtl.errors import ConfigError
from jtl.results.choose import DEFAULT_SELECT
from jtl.results.plots import plot
from jtl.results.report import collect
from jtl.results.tables import FORMATS, problem_lines, render


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
    p.add_argument("--target-label", help="eval label whose predictions SND, IM and DEV score, e.g. target_select "
                   "(the unlabelled target training images of configs/da_*.py; default: the metric's label)")
    p.add_argument("--format", choices=sorted(FORMATS), help="md, csv or tex (default: from --out, else md)")
    p.add_argument("--out", help="write the table to this file (default: print it)")
    p.add_argument("--domainbed", action="store_true",
                   help="domain-generalization runs: DomainBed's tables (held-out domains x algorithms) under "
                        "training-domain validation, leave-one-domain-out and the oracle (jtl.dg.selection)")
    p.add_argument("--plot", metavar="KEY", help="also plot the metric against this config key")
    p.add_argument("--plot-out", metavar="FILE.png", help="the plot's file (default: collect-KEY.png)")
    p.set_defaults(handler=cmd_collect)


def cmd_collect(args) -> int:
    if args.domainbed:
        from jtl.dg.selection import report as domainbed_report  # noqa: PLC0415

        text = domainbed_report(args.dirs)
        if args.out:
            _write_text(Path(args.out), text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
        return 0
    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lower().lstrip(".") if args.out else ""
        fmt = {"markdown": "md", "txt": "md"}.get(suffix, suffix) if suffix in (*FORMATS, "markdown", "txt") else "md"
    if args.plot_out and not args.plot:
        raise ConfigError("--plot-out needs --plot KEY (the config key on the x axis)")
    select = _split_list([args.select]) or []
    report = collect(args.dirs, metric=args.metric, group_by=_split_list(args.group_by), seed_key=args.seed_key,
                     select=select, source_label=args.source_label, target_label=args.target_label)
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
    problems = problem_lines(report)
    if problems and (args.out or fmt != "md"):
        print("\n".join(problems).lstrip("\n"), file=sys.stderr)
    if report.failed or report.missing:
        print(f"jtl collect: {len(report.failed)} failed and {len(report.missing)} missing runs (listed "
              f"{'above' if args.out or fmt != 'md' else 'below the table'})", file=sys.stderr)
    return 0
