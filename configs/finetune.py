"""Transfer within Fashion-MNIST: source task = classes 0-4, target task = classes 5-9.

Recipes (ARG): ``source`` pretrains a small ResNet on the source task;
``finetune`` trains all of it on the target task starting from ``model.init``;
``scratch`` trains the same model on the target from random weights;
``linear_probe`` fits a linear classifier on the frozen pretrained features.
``data.limit`` sets the target label budget (0 = all 30,000 images).

    jtl train --config configs/finetune.py:source --workdir runs/source
    jtl train --config configs/finetune.py:finetune --workdir runs/ft100 \\
        --config.model.init=runs/source --config.data.limit=100
    jtl train --config configs/finetune.py:linear_probe --workdir runs/lp100 \\
        --config.model.init=runs/source --config.data.limit=100

``make demo`` runs all of them at budgets 100 / 1,000 / all and prints the table
(README, "The main job").
"""

import ml_collections

SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def get_config(arg: str = "source"):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "cifar_resnet8", "num_classes": 5, "init": ""})
    c.data = ml_collections.ConfigDict({
        "train": "fashion_mnist",
        "classes": SOURCE if arg == "source" else TARGET,
        "eval": ("test=fashion_mnist:test",),
        "image_size": 28,
        "channels": 1,
        "normalize": "dataset",
        "augment": ("flip",),
    })
    c.batch_size = 128
    c.eval_batch_size = 500
    c.optim = ml_collections.ConfigDict({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                                         "schedule": "cosine", "warmup_steps": 20})
    if arg == "source":
        c.total_steps = 400
    elif arg in ("finetune", "scratch"):
        c.total_steps = 300
        if arg == "finetune":
            # The pretrained backbone moves 10x slower than the new head.
            c.optim.groups = (("head", r"^fc/", 1.0), ("backbone", r"^(?!fc/)", 0.1))
    elif arg == "linear_probe":
        c.recipe = "linear_probe"
        c.total_steps = 300
        c.optim.weight_decay = 1e-4
        c.data.augment = ()
    else:
        raise ValueError(f"unknown recipe {arg!r}: source, finetune, scratch or linear_probe")
    c.eval_every = 0
    c.checkpoint_every = 0
    c.log_every = 50
    return c
