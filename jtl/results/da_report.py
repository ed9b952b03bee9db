"""``jtl da-results``: the adaptation study of any config file, as a markdown report.

Per config (:mod:`jtl.results.da_study`: train, score without target labels, final
evaluation), the report holds the method table (mean +- std over seeds of the target
accuracy, every selection score, wall time; controls marked), the selection table (per
criterion the method it picks on each seed, the picked runs' target accuracy and the gain
over source_only and each control), the splits each number comes from, and with
``--figures`` the proxy A-distance between source and target features, t-SNE plots and the
per-class target accuracy of source_only and of the method IM picks (first seed)::

    jtl da-results --config configs/da_folder.py:source=/data/photos,target=/data/sketches \\
        --methods all --seeds 0,1,2 --workdir runs/own --out runs/own/results.md
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from jtl.errors import ConfigError
from jtl.results.da_study import Study, add_final_accuracy, default_name, score_runs, splits_of, train_all
from jtl.results.da_tables import CONTROLS, choose, method_table, selection_table


def splits_note(study: Study, splits: dict[str, str]) -> list[str]:
    """Which split each number of the tables comes from."""
    def where(label):
        return f"`{label}` = `{splits.get(label, 'not in this run')}`"

    return [f"Splits: selection scores SND and IM on {where(study.select_label)} (labels unused); source val on "
            f"{where(study.source_label)}; DEV: {where(study.source_label)} against {where(study.select_label)}; "
            f"target top-1 on {where(study.test_label)}; the target images adapted on: "
            f"`{splits.get('adapted on', '-')}`.", ""]


def _predictions(row: dict, label: str) -> dict:
    with np.load(Path(row["workdir"]) / "predictions" / f"{label}-{row['step']}.npz") as z:
        return {k: z[k] for k in z.files}


def _confusion_pairs(confusion) -> tuple[np.ndarray, np.ndarray]:
    """(one-hot predictions, labels) holding exactly the counts of ``confusion[label, predicted]``."""
    cm = np.asarray(confusion, np.int64)
    labels = np.repeat(np.repeat(np.arange(len(cm)), len(cm)), cm.ravel())
    preds = np.repeat(np.tile(np.arange(len(cm)), len(cm)), cm.ravel())
    return np.eye(len(cm))[preds], labels


def analysis(study: Study, rows: dict, seed: int, figures: Path, doc_dir: Path) -> list[str]:
    """Proxy A-distance of every method and, for ``seed``, t-SNE plots and the per-class target
    accuracy of source_only and of the method IM picks (features: the final predictions of
    ``source_label`` and ``select_label``; per-class accuracy: the final evaluation)."""
    from jtl.analysis import per_class_table, proxy_a_distance, tsne_plot  # noqa: PLC0415
    from jtl.train import record  # noqa: PLC0415 - the run's class names

    src, tgt = study.source_label, study.select_label
    lines = [f"### {study.name}: representations (seed {seed}, final checkpoint)", "",
             f"Proxy A-distance between `{src}` and `{tgt}` bottleneck features (a linear domain classifier's "
             "held-out error eps: d_A = 2 (1 - 2 eps); lower = less separable domains):", "",
             "| method | proxy A-distance |", "|---|---:|"]
    of_seed = {m: r for m, rs in rows.items() for r in rs if r["seed"] == seed}
    for method, r in of_seed.items():
        d = proxy_a_distance(_predictions(r, src)["features"], _predictions(r, tgt)["features"])
        lines.append(f"| {method} | {d:.3f} |")
    picked = choose({m: rs for m, rs in rows.items() if m != "source_only"}, seed, "im")
    lines.append("")
    figures.mkdir(parents=True, exist_ok=True)
    for method in ["source_only"] + ([picked] if picked else []):
        if method not in of_seed:
            continue
        sv, tg = _predictions(of_seed[method], src), _predictions(of_seed[method], tgt)
        png = figures / f"tsne_{study.name}_{method}.png"
        tsne_plot(sv["features"], tg["features"], png, source_labels=sv["labels"], target_labels=tg["labels"],
                  title=f"{study.name}: {method} (seed {seed})")
        rel = png.relative_to(doc_dir) if png.is_relative_to(doc_dir) else png
        onehot, labels = _confusion_pairs(of_seed[method]["final"]["confusion_matrix"])
        names = record.read(of_seed[method]["workdir"])["classes"]
        lines += [f"![t-SNE of {method} features]({rel})", "",
                  per_class_table(onehot, labels, names, title=f"{study.name}: {method}, per-class target accuracy on "
                                  f"`{study.test_label}` (oracle: uses target labels)"), ""]
    return lines


def report(study: Study, figures: str = "", doc_dir: Path = Path(".")) -> list[str]:
    """Train, score, evaluate (:mod:`jtl.results.da_study`) and render one study's section."""
    runs = train_all(study)
    rows = score_runs(study, runs)  # every selection score is fixed here, before any test image is read
    add_final_accuracy(study, rows)
    if not rows:
        return [f"## {study.name}", "", "No run finished.", ""]
    splits = splits_of(next(iter(rows.values()))[0]["workdir"])
    lines = [f"## {study.name}", "", f"`{study.config}`", ""] + splits_note(study, splits)
    lines += method_table(rows, study.select_label)
    lines += ["", "Best method per seed chosen without target labels (target top-1 of the chosen run):", ""]
    lines += selection_table(rows, study.seeds) + [""]
    if figures:
        lines += analysis(study, rows, study.seeds[0], Path(figures).absolute(), doc_dir)
    return lines


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("da-results", help="every adaptation method on a config's domains, several seeds, model "
                       "selection without target labels: a markdown report",
                       description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, metavar="FILE[:ARGS]",
                   help="a configs/da_*.py-style config with its ARGS but the method (repeatable)")
    p.add_argument("--name", help="the study's name (its folder under --workdir; default: the file's stem "
                   "without da_; one --config only)")
    p.add_argument("--methods", default="all", help="comma-separated methods of jtl.methods, or all")
    p.add_argument("--controls", default=",".join(CONTROLS),
                   help=f"comma-separated controls to run (of {', '.join(CONTROLS)}; empty: none)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", default="runs/da")
    p.add_argument("--out", default="results.md")
    p.add_argument("--override", action="append", default=[], help="extra KEY=VALUE config overrides")
    p.add_argument("--figures", default="", help="also write t-SNE plots here and add proxy A-distances and "
                   "per-class accuracy (first seed: source_only vs the method IM picks)")
    p.add_argument("--select-label", default="target_select",
                   help="eval label whose predictions SND, IM and DEV score (default: %(default)s)")
    p.add_argument("--test-label", default="target_test", help="eval label of the target accuracy")
    p.add_argument("--source-label", default="source_val", help="eval label of the source validation split")
    p.set_defaults(handler=cmd_da_results, accepts_overrides=True)


def studies_of(args) -> list[Study]:
    """The studies the command line asks for; a bad method, control, seed or name is one line."""
    from jtl.methods import METHODS  # noqa: PLC0415

    methods = list(METHODS) if args.methods == "all" else _csv(args.methods)
    if "source_only" not in methods:
        methods.insert(0, "source_only")
    controls = _csv(args.controls)
    unknown = [m for m in methods if m not in METHODS] + [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ConfigError(f"unknown method or control {', '.join(unknown)} (methods: {', '.join(METHODS)}; "
                          f"controls: {', '.join(CONTROLS)})")
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise ConfigError("--seeds names no seed")
    if args.name and len(args.config) > 1:
        raise ConfigError("--name needs a single --config (each config's study has its own folder)")
    names = [args.name or default_name(c) for c in args.config]
    if len(set(names)) != len(names):
        raise ConfigError(f"two --config give the study name {names}; run them separately with --name")
    for c in args.config:
        if not Path(c.partition(":")[0]).is_file():
            raise ConfigError(f"config file not found: {c.partition(':')[0]}")
    root = Path(args.workdir).absolute()
    return [Study(c, n, root, seeds, methods, controls, list(args.override) + list(args.overrides),
                  args.source_label, args.select_label, args.test_label) for c, n in zip(args.config, names)]


def command_line(args) -> str:
    """The ``jtl da-results`` command that makes this report (its options as given or defaulted)."""
    words = [w for c in args.config for w in ("--config", c)] + (["--name", args.name] if args.name else [])
    words += ["--methods", args.methods, "--controls", args.controls, "--seeds", args.seeds]
    words += [w for o in args.override for w in ("--override", o)]
    words += [f"--{o}" for o in args.overrides]  # each "config.KEY=VALUE"
    if args.figures:
        words += ["--figures", args.figures]
    return "jtl da-results " + shlex.join(words)


def cmd_da_results(args) -> int:
    from jtl.fileio import atomic_write_text  # noqa: PLC0415

    studies = studies_of(args)
    out = Path(args.out)
    lines = ["# Domain adaptation results", "", f"`{command_line(args)}`", "",
             "Target accuracy is measured with target labels (**oracle** information: reported, never used to "
             "choose). Mean +- std over seeds " + ", ".join(map(str, studies[0].seeds)) + "; final checkpoint.", ""]
    for study in studies:
        lines += report(study, args.figures, out.parent.absolute())
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    print(text)
    print(f"wrote {out}")
    return 0
