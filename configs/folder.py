"""Your own images: fine-tune on an image folder ``PATH/<class>/*.jpg|png``, checked on its own held-out split.

    jtl train --config configs/folder.py:/data/pets --workdir runs/pets
    jtl eval --workdir runs/pets --split val
    jtl predict --workdir runs/pets photo.jpg

ARG is ``PATH`` or ``PATH,RECIPE``:

- ``imagenet`` (default): torchvision's ImageNet ResNet-18 (``resnet18.tv_in1k``, fetched
  once and checked by sha256), fine-tuned at 224 px with ImageNet normalisation, the
  new head learning 10x faster than the backbone; SGD, cosine decay, 1,000 steps.
- ``scratch``: a CIFAR ResNet-20 trained from random weights at 64 px, for machines
  without the network or a GPU (and for trying the commands quickly).

A seeded, class-stratified 20% of every class is held out as ``val`` (``data.val_fraction``)
and evaluated every 250 steps; the checkpoint with the best ``val/top1`` is kept as ``best``.
The number of classes is the folder's (every sub-directory is a class, also an empty one).
Nothing here is Fashion-MNIST: train and eval both read ``folder:PATH``.
"""

import ml_collections

RECIPES = ("imagenet", "scratch")


def get_config(arg: str = ""):
    path, _, recipe = (arg or "").rpartition(",")
    if recipe not in RECIPES:  # no recipe given (a comma inside PATH is part of it)
        path, recipe = arg or "", "imagenet"
    if not path:
        raise ValueError(f"give the image folder: --config configs/folder.py:PATH[,{'|'.join(RECIPES)}]")
    from jtl.data import info  # the class count is the folder's

    name = f"folder:{path}"
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "resnet18", "num_classes": info(name).num_classes,
                                         "init": "resnet18.tv_in1k"})
    c.data = ml_collections.ConfigDict({
        "train": name, "train_split": "train", "val_fraction": 0.2, "eval": (f"val={name}:val",),
        "image_size": 224, "channels": 3, "normalize": "imagenet", "augment": ("crop", "flip"),
    })
    c.batch_size, c.eval_batch_size, c.total_steps = 32, 64, 1000
    c.optim = ml_collections.ConfigDict({
        "name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 50,
        "groups": (("head", r"^(?!backbone/)", 1.0), ("backbone", r"^backbone/", 0.1)),
    })
    if recipe == "scratch":
        c.model.name, c.model.init = "cifar_resnet20", ""
        c.data.image_size, c.data.normalize = 64, "dataset"
        c.optim.lr, c.optim.groups = 0.05, (("all", r".", 1.0),)
    c.eval_every = c.checkpoint_every = 250
    c.best_metric = "val/top1"
    return c
