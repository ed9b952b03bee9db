"""Office-31 (Saenko et al. 2010) under Transfer-Learning-Library's protocol: ResNet-50 (ImageNet,
torchvision weights), 224 px, the whole target domain adapted on and tested (``configs/tllib_common.py``).

ARG: ``METHOD[,task=A2W][,seed=0][,arch=resnet50][,steps=N]`` for one run;
``table[,methods=dann:mdd][,tasks=A2W:D2A][,seeds=0:1:2]`` for :func:`get_sweep` (every task x method x
seed; the seeds of one task and method train as one vectorized program). METHOD: source_only, dann,
cdan, dan, jan, mdd, mcd, afn, mcc. One run, and the whole table::

    jtl train --config configs/office31.py:mdd,task=A2W --workdir runs/office31/mdd_A2W
    jtl sweep --config configs/office31.py:table --workdir runs/office31
    jtl collect runs/office31 --group-by loss,data.train,adapt.target --select none --out office31.md

Expected (TLlib's README, "Office-31 accuracy on ResNet-50", target top-1 %, best epoch;
``source_only`` is TLlib's ERM):

| method | A→W | D→W | W→D | A→D | D→A | W→A | avg |
|---|---|---|---|---|---|---|---|
| source_only | 75.8 | 95.5 | 99.0 | 79.3 | 63.6 | 63.8 | 79.5 |
| dann | 91.4 | 97.9 | 100.0 | 83.6 | 73.3 | 70.4 | 86.1 |
| dan | 84.2 | 98.4 | 100.0 | 87.3 | 66.9 | 65.2 | 83.7 |
| jan | 93.7 | 98.4 | 100.0 | 89.4 | 69.2 | 71.0 | 87.0 |
| cdan | 93.8 | 98.5 | 100.0 | 89.9 | 73.4 | 70.4 | 87.7 |
| mcd | 90.4 | 98.5 | 100.0 | 87.3 | 68.3 | 67.6 | 85.4 |
| afn | 94.0 | 98.9 | 100.0 | 94.4 | 72.9 | 71.1 | 88.6 |
| mdd | 95.6 | 98.6 | 100.0 | 94.4 | 76.6 | 72.2 | 89.6 |
| mcc | 94.1 | 98.4 | 99.8 | 95.6 | 75.5 | 74.2 | 89.6 |
"""

from tllib_common import entry_points, pair_configs

TASKS = ("A2W", "D2W", "W2D", "A2D", "D2A", "W2A")
# Office-31's lines of TLlib's METHOD.sh (changes to METHOD.py's defaults).
CHANGES = {
    "source_only": {"epochs": 5},
    "mcd": {"iters": 500, "loss": {"mcd": 10.0}},
    "afn": {"loss": {"entropy": 0.1}},
    "mcc": {"iters": 500, "bottleneck": 1024},
}


get_config, get_sweep = entry_points(pair_configs("office31", 31, CHANGES), TASKS, "resnet50")
