"""``jtl rank``: order trained runs by their transferability to a labelled dataset, before training on it.

    jtl rank --dataset fashion_mnist --split train --classes 5,6,7,8,9 --limit 2000 \\
        --models runs/a runs/b runs/c --out rank.md

Each model (a run directory, its ``latest`` or ``best`` checkpoint, read as ``jtl eval``
reads it) sees the same target images once; its backbone's pooled features and its own
classifier's logits give the scores of :mod:`jtl.analysis.transferability`. The table
lists the models best first by the first score, with every score and each model's rank
under it. Nothing is trained and the runs are only read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jtl.errors import ConfigError

DEFAULT_SCORES = ("logme", "leep", "nce", "h_score", "transrate")


def run_outputs(workdir, source, *, checkpoint: str = "latest", batch_size: int = 250):
    """``(features, logits)`` of run ``workdir`` on every image of ``source`` (a
    :class:`jtl.data.Source`), in order: the backbone's pooled features (N, D) and the run's
    classifier logits (N, Z), at the run's input size, channels and normalisation."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from jtl import data as jdata  # noqa: PLC0415
    from jtl.train.inference import RunModel  # noqa: PLC0415

    run = RunModel(workdir, checkpoint)
    norm = run.normalization

    @jax.jit
    def apply(variables, images):
        out = run.forward(variables, {"image": images}, False)[0]
        feats = out["features"]
        return feats.get("backbone_pooled", feats["pooled"]), out["logits"]

    it = jdata.make_iterator(source, batch_size=min(batch_size, len(source)), seed=0, train=False,
                             normalize=(norm["mean"], norm["std"]), **jdata.geometry(norm),
                             channels=norm["channels"], output="uint8")
    features, logits = [], []
    for batch in it:
        mask = np.asarray(batch["mask"])
        f, z = apply(run.variables, jnp.asarray(batch["image"]))
        features.append(np.asarray(f, np.float64)[mask])
        logits.append(np.asarray(z, np.float64)[mask])
    return np.concatenate(features), np.concatenate(logits)


def rank_models(models, source, *, scores=DEFAULT_SCORES, checkpoint: str = "latest") -> list[dict]:
    """One row per model, ``{"model", <score>: value, ...}``, best first by ``scores[0]``."""
    from jtl.analysis.transferability import SCORES, score  # noqa: PLC0415

    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise ConfigError(f"unknown transferability score(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(SCORES)}")
    labels = np.asarray(source.labels).astype(np.int64)
    rows = []
    for m in models:
        features, logits = run_outputs(m, source, checkpoint=checkpoint)
        rows.append({"model": str(m), **{s: score(s, features=features, logits=logits, labels=labels)
                                         for s in scores}})
    return sorted(rows, key=lambda r: -r[scores[0]])


def rank_table(rows: list[dict], scores) -> str:
    """Markdown: one row per model with each score and its rank under it (1 = best)."""
    ranks = {s: {r["model"]: 1 + sorted((-x[s] for x in rows)).index(-r[s]) for r in rows} for s in scores}
    lines = ["| model | " + " | ".join(scores) + " |", "|---|" + "---:|" * len(scores)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[s]:.4f} ({ranks[s][r['model']]})" for s in scores) + " |")
    return "\n".join(lines) + "\n"


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="rank runs by transferability scores on a labelled dataset (no training)",
                       description="Score each model's features and predictions on a labelled dataset with "
                                   "LogME, LEEP, NCE, H-score and TransRate, and rank the models.")
    p.add_argument("--models", nargs="+", required=True, metavar="RUN", help="run directories to rank")
    p.add_argument("--dataset", required=True, help="labelled target dataset, e.g. fashion_mnist")
    p.add_argument("--split", default="train")
    p.add_argument("--classes", default="", help="comma-separated class ids to keep (relabelled 0..k-1)")
    p.add_argument("--limit", type=int, default=2000, help="a class-stratified subset of N images (0: all)")
    p.add_argument("--seed", type=int, default=0, help="picks the subset and seeded splits")
    p.add_argument("--scores", default=",".join(DEFAULT_SCORES), help="comma-separated (default: %(default)s); "
                   "the first orders the table")
    p.add_argument("--checkpoint", default="latest", choices=("latest", "best"))
    p.add_argument("--out", help="write the table here (.md) or as JSON (.json); default: print it")
    p.set_defaults(handler=cmd_rank)


def cmd_rank(args) -> int:
    from jtl import data as jdata  # noqa: PLC0415
    from jtl.fileio import atomic_write_text  # noqa: PLC0415

    from jtl.analysis.transferability import SCORES  # noqa: PLC0415

    scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    if not scores or any(s not in SCORES for s in scores):
        raise ConfigError(f"--scores {args.scores!r}: choose from {', '.join(SCORES)}")
    if args.limit < 0:
        raise ConfigError(f"--limit must be >= 0 (0: all images), got {args.limit}")
    try:
        classes = tuple(int(c) for c in args.classes.split(",") if c.strip())
    except ValueError:
        raise ConfigError(f"--classes must be comma-separated class ids, got {args.classes!r}") from None
    for m in args.models:
        if not (Path(m) / "config.json").exists():
            raise ConfigError(f"{m} is not a jtl run directory (no config.json)")
    opts = {"seed": args.seed, **({"classes": classes} if classes else {}),
            **({"limit": args.limit} if args.limit else {})}
    source = jdata.load(args.dataset, args.split, **opts)
    rows = rank_models(args.models, source, scores=scores, checkpoint=args.checkpoint)
    table = rank_table(rows, scores)
    if args.out:
        text = json.dumps(rows, indent=2) + "\n" if args.out.endswith(".json") else table
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    print(f"{len(source)} images of {args.dataset}:{args.split}; ranked by {scores[0]}\n" + table, end="")
    return 0
