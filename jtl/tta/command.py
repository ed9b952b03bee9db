"""``jtl eval --adapt tent|eata|sar``: evaluation with test-time adaptation.

The run's model adapts online to the stream of ``--split`` batches (:mod:`jtl.tta.adapter`)
and the reported metrics are those of its online predictions. Only the run directory and
the evaluated split are read, except for EATA's Fisher information, which needs a few
unlabelled in-distribution images (``--fisher-split``; default: the run's training set).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from jtl.errors import JtlError
from jtl.tta import METHODS

# option -> (type, default, help); None defaults are filled in by run_adapt
OPTIONS = {
    "mode": (str, "continual", "continual: the adapted model carries over batches; episodic: reset per batch"),
    "batch_size": (int, 64, "images per test batch (a remainder making no full batch is left out)"),
    "order": (str, "stored", "stream order: stored (as the split stores it) or shuffled (seeded by --stream-seed)"),
    "stream_seed": (int, 0, "seed of the shuffled order and of the Fisher images"),
    "steps": (int, 1, "updates per batch (the prediction is the last step's)"),
    "lr": (float, 1e-3, "SGD learning rate of the adapted parameters (0: test-batch statistics only)"),
    "momentum": (float, 0.9, "SGD momentum"),
    "norm_stats": (str, "batch", "BatchNorm statistics: batch (the test batch's, TENT) or source (running)"),
    "adapt_params": (str, None, "regex of the parameters that adapt (default: every normalisation layer's "
                                "scale and bias)"),
    "margin": (float, 0.4, "EATA/SAR entropy threshold E0 as a fraction of ln(num classes)"),
    "d_margin": (float, 0.4, "EATA redundancy threshold on |cos(p, mean p)|"),
    "fisher_alpha": (float, 2000.0, "EATA Fisher regulariser weight (0: none)"),
    "fisher_split": (str, None, "EATA: NAME:SPLIT of unlabelled in-distribution images (default: the run's "
                                "data.train)"),
    "fisher_size": (int, 2000, "EATA: how many of those images"),
    "rho": (float, 0.05, "SAR: sharpness-aware radius"),
    "reset_below": (float, 0.2, "SAR: recover the source model when the loss average falls below this"),
}
CHOICES = {"mode": ("continual", "episodic"), "order": ("stored", "shuffled"), "norm_stats": ("batch", "source")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--adapt`` options of ``jtl eval``."""
    g = p.add_argument_group("test-time adaptation (docs/test-time.md)")
    g.add_argument("--adapt", choices=METHODS, help="adapt online to the stream of --split batches")
    for name, (typ, default, text) in OPTIONS.items():
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None, choices=CHOICES.get(name),
                       help=f"{text} (default {default})")


def settings(args) -> dict:
    """The adaptation options of ``args`` with defaults; options without ``--adapt`` are refused."""
    given = [n for n in OPTIONS if getattr(args, n, None) is not None]
    if not args.adapt:
        if given:
            raise JtlError(f"--{given[0].replace('_', '-')} is an option of test-time adaptation; add --adapt "
                           f"{'|'.join(METHODS)}")
        return {}
    s = defaults(args.adapt, **{n: getattr(args, n) for n in given})
    checks = [(s["batch_size"] >= 1, "--batch-size must be at least 1"),
              (s["steps"] >= 1, "--steps must be at least 1"),
              (s["lr"] >= 0 and math.isfinite(s["lr"]), "--lr must be a finite number >= 0"),
              (0 <= s["momentum"] < 1, "--momentum must be in [0, 1)"),
              (s["margin"] > 0, "--margin must be > 0"), (s["fisher_size"] >= 1, "--fisher-size must be >= 1"),
              (s["rho"] >= 0 and s["fisher_alpha"] >= 0, "--rho and --fisher-alpha must be >= 0")]
    for ok, text in checks:
        if not ok:
            raise JtlError(f"{text}; see jtl eval --help")
    return s


def _fisher_batches(run, s: dict, model_batch: int):
    """Images only (labels unused) of ``fisher_size`` images of ``--fisher-split``."""
    from jtl.train.tasks import load_source  # noqa: PLC0415
    from jtl.tta.stream import test_stream  # noqa: PLC0415

    spec = s["fisher_split"] or f"{run.cfg.data.train}:{run.cfg.data.train_split}"
    name, sep, split = spec.rpartition(":")
    if not sep or not name:
        raise JtlError(f"--fisher-split {spec!r} is not NAME:SPLIT")
    src = load_source(run.cfg, name, split, budget=False, classes=run.classes)
    pick = np.random.default_rng(s["stream_seed"]).permutation(len(src))[: s["fisher_size"]]
    batches, _ = test_stream(src.subset(np.sort(pick)), batch_size=min(model_batch, len(pick)),
                             normalization=run.normalization)
    return [images for images, _ in batches]


def defaults(adapt: str, **overrides) -> dict:
    """Settings of method ``adapt`` as ``jtl eval --adapt`` would have them, with ``overrides``."""
    unknown = set(overrides) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown test-time adaptation options: {sorted(unknown)}")
    return {"adapt": adapt, **{n: spec[1] for n, spec in OPTIONS.items()}, **overrides}


def build_adapter(run, s: dict):
    """The :class:`jtl.tta.adapter.Adapter` of ``run`` (a :class:`jtl.train.inference.RunModel`) for
    settings ``s`` (:func:`settings`, :func:`defaults`); EATA's Fisher images are read here."""
    from jtl.train.inference import _model_of  # noqa: PLC0415
    from jtl.tta.adapter import Adapter  # noqa: PLC0415
    from jtl.tta.steps import Options  # noqa: PLC0415

    options = Options(lr=s["lr"], momentum=s["momentum"], margin_fraction=s["margin"], d_margin=s["d_margin"],
                      fisher_alpha=s["fisher_alpha"], rho=s["rho"], reset_below=s["reset_below"])
    fisher = _fisher_batches(run, s, s["batch_size"]) if s["adapt"] == "eata" and s["fisher_alpha"] else None
    try:
        return Adapter(_model_of(run.cfg, run.facts), run.variables, run.normalization, run.cfg.model.num_classes,
                       s["adapt"], options, norm_stats=s["norm_stats"], adapt_params=s["adapt_params"],
                       fisher_batches=fisher)
    except ValueError as e:
        raise JtlError(str(e)) from None


def run_adapt(run, source, s: dict) -> dict:
    """Adapt ``run``'s model online to ``source``: the metrics of its online predictions, and ``adapt``
    (the settings, batches, images left out, mean selected samples, SAR recoveries, compilations)."""
    import jax  # noqa: PLC0415

    from jtl.train.metrics import classification_metrics  # noqa: PLC0415
    from jtl.tta.stream import test_stream  # noqa: PLC0415

    if jax.process_count() > 1:
        raise JtlError("--adapt runs in one process (one stream, on one device); start it without "
                       "--num-processes / JTL_NUM_PROCESSES")
    source = run.classes.align(source)
    batches, dropped = test_stream(source, batch_size=s["batch_size"], order=s["order"], seed=s["stream_seed"],
                                   normalization=run.normalization)
    adapter = build_adapter(run, s)
    out = adapter.run(batches, episodic=s["mode"] == "episodic", steps=s["steps"])
    if not np.all(np.isfinite(out["logits"])):
        raise JtlError(f"{s['adapt']} diverged (non-finite logits); lower --lr")
    result = classification_metrics(out["logits"], out["labels"])
    return {**result, "adapt": {**s, "dropped": dropped, "batches": len(out["loss"]),
                                "mean_selected": float(np.mean(out["selected"])), "resets": out["resets"],
                                "compilations": adapter.compilations}}
