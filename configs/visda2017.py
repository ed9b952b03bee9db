"""VisDA-2017 classification (Peng et al. 2017), synthetic -> real, under Transfer-Learning-Library's
protocol: ResNet-101 (ImageNet, torchvision weights; ``arch=resnet50`` for ResNet-50), train images
resized to 256 x 256 and centre-cropped to 224 px, then flipped (TLlib's ``--train-resizing cen.crop``;
test images alike, unflipped), the whole validation
(real) domain adapted on and tested; the score is the mean of the 12 per-class accuracies
(``target_test/macro_recall``) (``configs/tllib_common.py``; ARG as ``configs/office31.py``, one task S2R)::

    jtl train --config configs/visda2017.py:mdd --workdir runs/visda2017/mdd
    jtl sweep --config configs/visda2017.py:table --workdir runs/visda2017
    jtl collect runs/visda2017 --metric target_test/macro_recall --group-by loss --select none --out visda2017.md

Expected (TLlib's README, "VisDA-2017 accuracy ResNet-101", mean per-class accuracy %, best epoch;
in brackets the overall accuracy, ``target_test/top1``):

| method | source_only | dann | dan | jan | cdan | mcd | afn | mdd | mcc |
|---|---|---|---|---|---|---|---|---|---|
| mean per class | 51.7 (56.9) | 79.5 (74.9) | 66.4 (67.2) | 73.4 (70.3) | 80.1 (76.5) | 77.7 (76.7) | 75.0 (74.4) | 82.0 (79.8) | 83.6 (80.4) |
"""

from tllib_common import entry_points, tllib_config

TASKS = ("S2R",)
# VisDA-2017's lines of TLlib's METHOD.sh (changes to METHOD.py's defaults).
CHANGES = {
    "source_only": {"epochs": 20, "iters": 1000},
    "dann": {"epochs": 30},
    "cdan": {"epochs": 30},
    "mdd": {"epochs": 30, "batch": 36},
    "mcd": {"iters": 500},
    "afn": {"epochs": 10, "iters": 1000, "batch": 36, "options": {"afn": {"delta": 0.3}}},
    "mcc": {"epochs": 30, "lr": 0.002, "options": {"mcc": {"temperature": 3.0}}},
}


def make_config(method, task, seed, *, arch, steps):
    c = tllib_config(method, source="visda2017:synthetic", target="visda2017:real", eval_split="test",
                     num_classes=12, arch=arch, image_size=224, changes=CHANGES.get(method), seed=seed,
                     steps=steps, train_resizing="cen.crop")
    c.best_metric = "target_test/macro_recall"  # TLlib's VisDA score: the mean of the per-class accuracies
    return c


get_config, get_sweep = entry_points(make_config, TASKS, "resnet101")
