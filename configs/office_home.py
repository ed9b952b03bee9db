"""Office-Home (Venkateswara et al. 2017) under Transfer-Learning-Library's protocol: ResNet-50
(ImageNet, torchvision weights), 224 px, the whole target domain adapted on and tested
(``configs/tllib_common.py``; ARG as ``configs/office31.py``, tasks Ar2Cl ... Rw2Pr)::

    jtl train --config configs/office_home.py:mdd,task=Ar2Cl --workdir runs/office_home/mdd_Ar2Cl
    jtl sweep --config configs/office_home.py:table --workdir runs/office_home
    jtl collect runs/office_home --group-by loss,data.train,adapt.target --select none --out office_home.md

Expected (TLlib's README, "Office-Home accuracy on ResNet-50", target top-1 %, best epoch):

| method | Ar→Cl | Ar→Pr | Ar→Rw | Cl→Ar | Cl→Pr | Cl→Rw | Pr→Ar | Pr→Cl | Pr→Rw | Rw→Ar | Rw→Cl | Rw→Pr | avg |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| source_only | 41.1 | 65.9 | 73.7 | 53.1 | 60.1 | 63.3 | 52.2 | 36.7 | 71.8 | 64.8 | 42.6 | 75.2 | 58.4 |
| dan | 45.6 | 67.7 | 73.9 | 57.7 | 63.8 | 66.0 | 54.9 | 40.0 | 74.5 | 66.2 | 49.1 | 77.9 | 61.4 |
| dann | 53.8 | 62.6 | 74.0 | 55.8 | 67.3 | 67.3 | 55.8 | 55.1 | 77.9 | 71.1 | 60.7 | 81.1 | 65.2 |
| jan | 50.8 | 71.9 | 76.5 | 60.6 | 68.3 | 68.7 | 60.5 | 49.6 | 76.9 | 71.0 | 55.9 | 80.5 | 65.9 |
| cdan | 55.2 | 72.4 | 77.6 | 62.0 | 69.7 | 70.9 | 62.4 | 54.3 | 80.5 | 75.5 | 61.0 | 83.8 | 68.8 |
| mcd | 51.7 | 72.2 | 78.2 | 63.7 | 69.5 | 70.8 | 61.5 | 52.8 | 78.0 | 74.5 | 58.4 | 81.8 | 67.8 |
| afn | 53.2 | 72.7 | 76.8 | 65.0 | 71.3 | 72.3 | 65.0 | 51.4 | 77.9 | 72.3 | 57.8 | 82.4 | 68.2 |
| mdd | 56.2 | 75.4 | 79.6 | 63.5 | 72.1 | 73.8 | 62.5 | 54.8 | 79.9 | 73.5 | 60.9 | 84.5 | 69.7 |
| mcc | 58.4 | 79.6 | 83.0 | 67.5 | 77.0 | 78.5 | 66.6 | 54.8 | 81.8 | 74.4 | 61.4 | 85.6 | 72.4 |
"""

from tllib_common import entry_points, pair_configs

DOMAINS = ("Ar", "Cl", "Pr", "Rw")
TASKS = tuple(f"{s}2{t}" for s in DOMAINS for t in DOMAINS if s != t)
# Office-Home's lines of TLlib's METHOD.sh (changes to METHOD.py's defaults).
CHANGES = {
    "source_only": {"epochs": 5},
    "dann": {"epochs": 30},
    "cdan": {"epochs": 30},
    "mdd": {"epochs": 30, "bottleneck": 2048},
    "mcd": {"iters": 500, "loss": {"mcd": 30.0}},
    "mcc": {"epochs": 30, "bottleneck": 2048},
}


get_config, get_sweep = entry_points(pair_configs("office_home", 65, CHANGES), TASKS, "resnet50")
