"""Transfer within Fashion-MNIST: source task = classes 0-4, target task = classes 5-9.

ARG = ``RECIPE`` or ``RECIPE,limit=N``. Recipes: ``source`` pretrains a small ResNet
on the source task; ``finetune`` trains all of it on the target task starting from
``model.init``; ``scratch`` trains the same model on the target from random weights;
``linear_probe`` fits a linear classifier on the frozen pretrained features.

``limit=N`` is the target label budget (``data.limit``, a seeded subset of N images;
0 = all 30,000) with a batch that fits it: ``batch_size = min(128, N // 2)``, so an
epoch has at least two batches (50 at 100 labels, as ``make demo``; 128 from 256 labels
up). Setting ``--config.data.limit=N`` by hand instead keeps batch 128, so below 128
labels pass a batch too (``--config.batch_size=50``); a batch larger than the
labelled set is refused.

    jtl train --config configs/finetune.py:source --workdir runs/source
    jtl train --config configs/finetune.py:finetune,limit=100 --workdir runs/ft100 \\
        --config.model.init=runs/source
    jtl train --config configs/finetune.py:linear_probe,limit=100 --workdir runs/lp100 \\
        --config.model.init=runs/source

``make demo`` runs all of them at budgets 100 / 1,000 / all and prints the table
(README, "The main job").
"""

import ml_collections

from jtl.config import config_args

SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def batch_size_for(limit: int) -> int:
    """The batch of a label budget: 128, or half the budget when that is smaller (0 = all labels)."""
    return 128 if limit <= 0 else max(1, min(128, limit // 2))


def get_config(arg: str = "source"):
    opts = config_args(arg, ("recipe",), recipe="source", limit="0")
    recipe = opts["recipe"]
    if not opts["limit"].isdigit():
        raise ValueError(f"limit={opts['limit']}: give a label budget N >= 0 (0 = all labels)")
    limit = int(opts["limit"])
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "cifar_resnet8", "num_classes": 5, "init": ""})
    c.data = ml_collections.ConfigDict({
        "train": "fashion_mnist",
        "classes": SOURCE if recipe == "source" else TARGET,
        "eval": ("test=fashion_mnist:test",),
        "image_size": 28,
        "channels": 1,
        "normalize": "dataset",
        "augment": ("flip",),
        "limit": limit,
    })
    c.batch_size = batch_size_for(limit)
    c.eval_batch_size = 500
    c.optim = ml_collections.ConfigDict({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                                         "schedule": "cosine", "warmup_steps": 20})
    if recipe == "source":
        c.total_steps = 400
    elif recipe in ("finetune", "scratch"):
        c.total_steps = 300
        if recipe == "finetune":
            # The pretrained backbone moves 10x slower than the new head.
            c.optim.groups = (("head", r"^(?!backbone/)", 1.0), ("backbone", r"^backbone/", 0.1))
    elif recipe == "linear_probe":
        c.recipe = "linear_probe"
        c.total_steps = 300
        c.optim.weight_decay = 1e-4
        c.data.augment = ()
    else:
        raise ValueError(f"unknown recipe {recipe!r}: source, finetune, scratch or linear_probe")
    c.eval_every = 0
    c.checkpoint_every = 0
    c.log_every = 50
    return c
