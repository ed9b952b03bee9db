"""Ablations of the adaptation study on digits -> MNIST-M-style digits, as sweeps.

ARG = ``STUDY,METHOD[,init=DIR]``: ``DIR/seed<S>`` are the source-only warm-up runs
the members start from (``scripts/ablate_da.py`` trains them first). Studies:

- ``tradeoff``: the method's adaptation weight (``loss.<piece>``) over 0.03 .. 3;
- ``bottleneck``: ``adapt.bottleneck_dim`` in 0 (none), 64, 256, 1024;
- ``bandwidth``: DAN's kernel bandwidth multipliers (``loss_options.mmd.alphas``);
- ``source``: the source-only warm-up runs themselves (one per seed).

Each study crosses its values with seeds 0, 1, 2. Members that differ only in numbers
(trade-off weights, seeds, starting weights) train as one vectorized program::

    jtl sweep --config configs/ablate_da.py:tradeoff,dann,init=runs/ablate/source --workdir runs/ablate/tradeoff_dann
"""

from da_common import da_config

from jtl.config import config_args
from jtl.sweep import grid

SEEDS = (0, 1, 2)
PIECE = {"dann": "dann", "cdan": "cdan", "mcc": "mcc", "dan": "mmd", "bnm": "bnm", "coral": "coral", "mdd": "mdd"}
TRADEOFFS = (0.03, 0.1, 0.3, 1.0, 3.0)
BOTTLENECKS = (0, 64, 256, 1024)
BANDWIDTHS = ((1.0,), (0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0, 4.0), (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0))


def _parse(arg):
    a = config_args(arg, ("study", "method"), study="tradeoff", method="dann", init="")
    return a["study"], a["method"], a


def get_config(arg=None):
    study, method, opts = _parse(arg)
    if study == "source":
        method = "source_only"
    c = da_config(method, source="digits", target="digits:mnistm", image_size=16, steps=600, batch_size=32)
    c.save_predictions = True  # for model selection without target labels (jtl collect)
    c.progress = False
    return c


def get_sweep(arg=None):
    study, method, opts = _parse(arg)
    init = opts.get("init")
    seeds = [{"seed": s, **({"model.init": f"{init}/seed{s}"} if init else {})} for s in SEEDS]
    if study == "source":
        return grid({"seed": list(SEEDS)})
    if study == "tradeoff":
        if method not in PIECE:
            raise ValueError(f"tradeoff study knows {sorted(PIECE)}, not {method!r}")
        return [{f"loss.{PIECE[method]}": w, **s} for w in TRADEOFFS for s in seeds]
    if study == "bottleneck":
        return [{"adapt.bottleneck_dim": d, **s} for d in BOTTLENECKS for s in seeds]
    if study == "bandwidth":
        return [{"loss_options.mmd.alphas": a, **s} for a in BANDWIDTHS for s in seeds]
    raise ValueError(f"unknown study {study!r}: tradeoff, bottleneck, bandwidth or source")
