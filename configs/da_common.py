"""Shared recipe of the configs/da_*.py domain-adaptation experiments (not a config itself).

Protocol (Ganin et al. 2016; Long et al. 2018): SGD, momentum 0.9, lr 0.01 for the
bottleneck and heads and 0.001 for the backbone (multiplier 0.1), inverse decay
lr (1 + 10 p)^-0.75, weight decay 1e-3, a 256-d bottleneck with BatchNorm, GRL
warm-up; adaptation methods start from the source-only run of the same seed
(``model.init``: the source warm-up).

Splits of the target (docs/adaptation.md, "Your own domains"): the methods adapt on
``adapt.target_split`` (default ``train``: every image of it); ``target_select`` (an eval
label: the target training images by default, labels unused) is what unsupervised model
selection scores; ``target_test`` is the target accuracy. With ``held_out_test`` the test
split is never evaluated during training (``data.test``): only by ``jtl eval --split
target_test`` or ``jtl da-results``' final evaluation, after every choice is made.
"""

import ml_collections

from jtl.config import config_args
from jtl.methods import OPTIONS, method

SEEDS = (0, 1, 2)
ARGS = {"method": "source_only", "init": "", "seeds": ""}  # what every configs/da_*.py ARG may hold


def da_args(arg, **more) -> dict:
    """``METHOD[,init=DIR][,seeds=S:S...]`` (and a config's own ``more`` options) as a dict."""
    return config_args(arg, ("method",), **ARGS, **more)


def da_config(arg, *, source, target, classes=(), image_size=32, channels=3, num_classes=10,
              steps=1000, batch_size=64, select_split="train", test_split="test", held_out_test=False):
    """``arg`` = ``METHOD`` or ``METHOD,init=WORKDIR`` (and ``seeds=...`` for :func:`da_sweep`), or
    :func:`da_args`' dict. ``target_select`` = ``{target}:{select_split}``; ``target_test`` =
    ``{target}:{test_split}`` (a full ``NAME:SPLIT`` as ``test_split`` names another dataset),
    evaluated during training unless ``held_out_test``."""
    opts = arg if isinstance(arg, dict) else da_args(arg)
    name = opts["method"]
    test = f"target_test={test_split if ':' in test_split else f'{target}:{test_split}'}"
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "cifar_resnet8", "num_classes": num_classes, "init": opts["init"]})
    c.data = ml_collections.ConfigDict({
        "train": source, "classes": classes, "val_fraction": 0.1, "image_size": image_size, "channels": channels,
        "normalize": "dataset", "augment": (),
        "eval": (f"source_val={source}:val", f"target_select={target}:{select_split}")
        + (() if held_out_test else (test,)),
        "test": (test,) if held_out_test else (),
    })
    c.adapt = ml_collections.ConfigDict({"target": target, "target_split": "train", "bottleneck_dim": 256})
    c.loss = method(name)
    c.loss_options = ml_collections.ConfigDict(OPTIONS.get(name, {}))
    c.batch_size, c.eval_batch_size, c.total_steps = batch_size, 500, steps
    c.optim = ml_collections.ConfigDict({
        "name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "schedule": "inv",
        "groups": (("backbone", r"^backbone/", 0.1), ("heads", r"^(?!backbone/)", 1.0)),
    })
    if name == "source_only" and not c.model.init:
        c.optim.groups = (("all", r".", 1.0),)  # training from scratch: one learning rate
        c.optim.lr = 0.05
        c.optim.schedule = "cosine"
    c.eval_every = steps // 3
    c.checkpoint_every = steps // 3
    c.best_metric = "source_val/top1"
    c.log_every = 50
    return c


def da_sweep(arg):
    """``get_sweep`` of the configs/da_*.py files: the method on each seed (``seeds=0:1:2``), with
    predictions saved for model selection; ``init=DIR`` starts seed S from ``DIR/seed<S>`` (the
    source warm-ups). The seeds differ only in numbers and starting weights: one vectorized program."""
    opts = arg if isinstance(arg, dict) else da_args(arg)
    seeds = [int(x) for x in opts["seeds"].split(":")] if opts["seeds"] else SEEDS
    return [{"seed": s, "save_predictions": True, **({"model.init": f"{opts['init']}/seed{s}"} if opts["init"] else {})}
            for s in seeds]
