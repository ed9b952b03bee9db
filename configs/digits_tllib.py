"""Digits (MNIST -> USPS, USPS -> MNIST, SVHN -> MNIST) under Transfer-Learning-Library's protocol:
trained from scratch, batch 128, 2,500 iterations per epoch, no flip, images resized to 28 px
(32 px, RGB, for SVHN -> MNIST; bicubic: TLlib's ``--train-resizing res.``), the target's train split
adapted on and its test split tested (``configs/tllib_common.py``; ARG as ``configs/office31.py``,
tasks M2U, U2M, S2M)::

    jtl train --config configs/digits_tllib.py:dann,task=M2U --workdir runs/digits/dann_M2U
    jtl sweep --config configs/digits_tllib.py:table --workdir runs/digits_tllib
    jtl collect runs/digits_tllib --group-by loss,data.train,adapt.target --select none --out digits_tllib.md

TLlib trains its LeNet (M2U, U2M) and DTN (S2M), which jtl's model zoo does not have; the default
here is ``cifar_resnet20`` (``arch=`` picks another). TLlib's images are normalised with mean =
std = 0.5; here with the source's own statistics (``data.normalize = "dataset"``).

Expected: TLlib publishes no digits table (its README reports Office-31, Office-Home, VisDA-2017
and DomainNet only), so this config has no published number to meet; its recipes are those of
TLlib's ``METHOD.sh`` digits lines.
"""

from tllib_common import entry_points, tllib_config

TASKS = ("M2U", "U2M", "S2M")
DATA = {"M": "mnist", "U": "usps", "S": "svhn"}
# Learning rates of TLlib's METHOD.sh digits lines, by task (the rest: 0.01).
LR = {"U2M": {"source_only": 0.1, "dann": 0.1, "cdan": 0.1, "dan": 0.1, "jan": 0.1, "mcd": 0.1, "afn": 0.03,
              "mcc": 0.1},
      "S2M": {"source_only": 0.1, "dann": 0.03, "jan": 0.03, "mcd": 0.03, "afn": 0.1}}
CHANGES = {
    "mcd": {"loss": {"mcd": 0.3}, "options": {"mcd": {"balance_weight": 0.03}}},
    "afn": {"loss": {"entropy": 0.03}},
}


def make_config(method, task, seed, *, arch, steps):
    source, target = (DATA[d] for d in task.split("2"))
    rgb = task == "S2M"
    delta = {"afn": {"options": {"afn": {"delta": 0.3 if task == "M2U" else 0.1}}}}.get(method, {})
    changes = {**CHANGES.get(method, {}), **delta, "batch": 128, "iters": 2500, "epochs": 20,
               "lr": LR.get(task, {}).get(method, 0.01)}
    if "options" in CHANGES.get(method, {}) and delta:
        changes["options"] = {**CHANGES[method]["options"], **delta["options"]}
    return tllib_config(method, source=source, target=target, eval_split="test", num_classes=10, arch=arch,
                        image_size=32 if rgb else 28, channels=3 if rgb else 1, changes=changes, seed=seed,
                        steps=steps, normalize="dataset", train_resizing="res.", val_resizing="res.", hflip=False,
                        pretrained=False)


get_config, get_sweep = entry_points(make_config, TASKS, "cifar_resnet20")
