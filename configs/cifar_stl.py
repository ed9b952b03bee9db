"""CIFAR-10 -> STL-10 and STL-10 -> CIFAR-10 with the standard 9-class protocol (French, Mackiewicz &
Fisher, ICLR 2018; Shu et al., DIRT-T, ICLR 2018): CIFAR's ``frog`` and STL's ``monkey`` dropped, the
other nine classes matched by name (``cifar9`` and ``stl9``, :mod:`jtl.data.benchmarks.cifar_stl`),
STL's 96 px images resized to CIFAR's 32 px. The source's ``train`` split is learned, the target's
``train`` split (labels unused) adapted on, and the target's ``test`` split tested.

ARG as ``configs/office31.py``: ``METHOD[,task=C2S][,seed=0][,arch=cifar_resnet20][,steps=N]``;
``table[,methods=dann:mdd][,tasks=C2S:S2C][,seeds=0:1:2]``. Tasks: ``C2S`` (CIFAR -> STL),
``S2C`` (STL -> CIFAR). One run, and the whole table::

    jtl train --config configs/cifar_stl.py:dann,task=C2S --workdir runs/cifar_stl/dann_C2S
    jtl sweep --config configs/cifar_stl.py:table --workdir runs/cifar_stl
    jtl collect runs/cifar_stl --group-by loss,data.train,adapt.target --select none --out cifar_stl.md

Recipe. Transfer-Learning-Library has no CIFAR <-> STL script, so each method keeps TLlib's own
``METHOD.py`` defaults (``configs/tllib_common.py``: learning rate, inverse decay, iterations,
batch 32 per domain, bottleneck, heads, loss options) without a benchmark line, as
``configs/digits_tllib.py`` does for digits. As in the seed articles the network is trained from
scratch: STL-10's images come from ImageNet, so ImageNet weights would have seen the target.
jtl's choices where no recipe speaks: ``cifar_resnet20`` (the seed articles' own conv nets are not
in jtl's model zoo; ``arch=`` picks another); every image resized to 32 x 32 and flipped at random,
no crop (TLlib's ``--train-resizing res. --val-resizing res.``, as its digits lines); inputs
normalised with the source's statistics (``data.normalize = "dataset"``).

Expected: no published number is quoted here. The seed articles report this pair with their own
conv nets and methods (mean teacher; VADA / DIRT-T), none of which jtl has, and their tables could
not be checked from a source available to this project, so this config has no number to meet.
"""

from tllib_common import entry_points, tllib_config

TASKS = ("C2S", "S2C")
DATA = {"C": "cifar9", "S": "stl9"}


def make_config(method, task, seed, *, arch, steps):
    source, target = (DATA[d] for d in task.split("2"))
    return tllib_config(method, source=source, target=target, eval_split="test", num_classes=9, arch=arch,
                        image_size=32, seed=seed, steps=steps, normalize="dataset", train_resizing="res.",
                        val_resizing="res.", hflip=True, pretrained=False)


get_config, get_sweep = entry_points(make_config, TASKS, "cifar_resnet20")
