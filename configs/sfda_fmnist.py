"""Source-free adaptation of a Fashion-MNIST source run to a Fashion-MNIST shift (SHOT, NRC).

Only the source run's directory and the unlabelled target images are used (docs/source-free.md):
the source model is any ``configs/da_fmnist_*.py:source_only`` run (the same cifar_resnet8 with a
256-d bottleneck at 28 px)::

    jtl train --config configs/da_fmnist_mnistm.py:source_only --workdir runs/fmnist_mnistm/source_only
    jtl train --config configs/sfda_fmnist.py:shot,init=runs/fmnist_mnistm/source_only --workdir runs/sfda/shot

``ARG`` = ``METHOD[,init=DIR][,target=NAME][,weight0=1][,seeds=0:1:2][,controls=1]``: METHOD is ``shot`` or
``nrc`` (:data:`jtl.methods.SOURCE_FREE`); ``target`` defaults to ``fashion_mnist:mnistm``;
``weight0=1`` is the zero-weight control (every loss weight 0: the same run, in which only the
target BatchNorm statistics and weight decay move the model). ``get_sweep``: one run per seed,
seed S starting from ``init/seed<S>``.

Protocol (SHOT's, Liang et al. 2020): the classifier is frozen (the source hypothesis); SGD,
momentum 0.9, lr 0.01 (backbone 0.1x), inverse decay, weight decay 1e-3, batch 64, no
augmentation, adapting on the target's ``train`` split and testing on its ``test`` split.
Results (3 seeds): docs/source-free.md.
"""

import ml_collections

from jtl.config import config_args
from jtl.methods import SOURCE_FREE

SEEDS = (0, 1, 2)


def _args(arg):
    return config_args(arg, ("method",), method="shot", init="", target="fashion_mnist:mnistm", weight0="",
                       seeds="", controls="")


def get_config(arg=None):
    opts = _args(arg)
    if opts["method"] not in SOURCE_FREE:
        raise ValueError(f"unknown source-free method {opts['method']!r}; known: {', '.join(SOURCE_FREE)}")
    target, steps = opts["target"], 700
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "cifar_resnet8", "num_classes": 10, "init": opts["init"]})
    # data.train is not read (no source data): the target set below is the training data.
    c.data = ml_collections.ConfigDict({"train": target, "image_size": 28, "channels": 3, "augment": (),
                                        "eval": (f"target_test={target}:test",)})
    c.adapt = ml_collections.ConfigDict({"target": target, "target_split": "train", "bottleneck_dim": 256,
                                         "source_free": True})
    weights = SOURCE_FREE[opts["method"]]
    c.loss = {name: 0.0 if opts["weight0"] else w for name, w in weights.items()}
    c.freeze = (r"^head/",)
    c.batch_size, c.eval_batch_size, c.total_steps = 64, 500, steps
    c.optim = ml_collections.ConfigDict({
        "name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "schedule": "inv",
        "groups": (("backbone", r"^backbone/", 0.1), ("heads", r"^(?!backbone/)", 1.0)),
    })
    c.eval_every = steps // 2
    c.checkpoint_every = steps // 2
    c.log_every = 50
    return c


def get_sweep(arg=None):
    """One run per seed; ``controls=1`` adds each seed's zero-weight control (the same run, every
    loss weight 0), which trains in the same vectorized program (weights are swept numbers)."""
    opts = _args(arg)
    seeds = [int(s) for s in opts["seeds"].split(":")] if opts["seeds"] else SEEDS
    weights = [{}] + ([{f"loss.{n}": 0.0 for n in SOURCE_FREE[opts["method"]]}] if opts["controls"] else [])
    return [{"seed": s, "save_predictions": True, **w,
             **({"model.init": f"{opts['init']}/seed{s}"} if opts["init"] else {})} for w in weights for s in seeds]
