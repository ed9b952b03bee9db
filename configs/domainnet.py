"""DomainNet (Peng et al. 2019), the 12 single-source tasks among clipart, painting, real and sketch,
under Transfer-Learning-Library's protocol: ResNet-101 (ImageNet, torchvision weights), 224 px; the
source's official train list is trained on, the target's train list adapted on, its test list tested
(``configs/tllib_common.py``; ARG as ``configs/office31.py``, tasks c2p ... s2r)::

    jtl train --config configs/domainnet.py:mdd,task=c2p --workdir runs/domainnet/mdd_c2p
    jtl sweep --config configs/domainnet.py:table --workdir runs/domainnet
    jtl collect runs/domainnet --group-by loss,data.train,adapt.target --select none --out domainnet.md

Expected (TLlib's README, "DomainNet accuracy on ResNet-101", target test top-1 %, best epoch):

| method | c→p | c→r | c→s | p→c | p→r | p→s | r→c | r→p | r→s | s→c | s→p | s→r | avg |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| source_only | 32.7 | 50.6 | 39.4 | 41.1 | 56.8 | 35.0 | 48.6 | 48.8 | 36.1 | 49.0 | 34.8 | 46.1 | 43.3 |
| dan | 38.8 | 55.2 | 43.9 | 45.9 | 59.0 | 40.8 | 50.8 | 49.8 | 38.9 | 56.1 | 45.9 | 55.5 | 48.4 |
| dann | 37.9 | 54.3 | 44.4 | 41.7 | 55.6 | 36.8 | 50.7 | 50.8 | 40.1 | 55.0 | 45.0 | 54.5 | 47.2 |
| jan | 40.5 | 56.7 | 45.1 | 47.2 | 59.9 | 43.0 | 54.2 | 52.6 | 41.9 | 56.6 | 46.2 | 55.5 | 50.0 |
| cdan | 40.4 | 56.8 | 46.1 | 45.1 | 58.4 | 40.5 | 55.6 | 53.6 | 43.0 | 57.2 | 46.4 | 55.7 | 49.9 |
| mcd | 37.5 | 52.9 | 44.0 | 44.6 | 54.5 | 41.6 | 52.0 | 51.5 | 39.7 | 55.5 | 44.6 | 52.0 | 47.5 |
| mdd | 42.9 | 59.5 | 47.5 | 48.6 | 59.4 | 42.6 | 58.3 | 53.7 | 46.2 | 58.7 | 46.5 | 57.7 | 51.8 |
| mcc | 37.7 | 55.7 | 42.6 | 45.4 | 59.8 | 39.9 | 54.4 | 53.1 | 37.0 | 58.1 | 46.3 | 56.2 | 48.9 |

TLlib publishes no DomainNet AFN row (its ``afn.sh`` recipe is here all the same).
"""

from tllib_common import entry_points, pair_configs

DOMAINS = {"c": "clipart", "p": "painting", "r": "real", "s": "sketch"}
TASKS = tuple(f"{s}2{t}" for s in DOMAINS for t in DOMAINS if s != t)
LONG = {"epochs": 30, "iters": 2500}
# DomainNet's lines of TLlib's METHOD.sh (changes to METHOD.py's defaults).
CHANGES = {
    "source_only": {"epochs": 20, "iters": 2500, "lr": 0.01},
    "dann": {**LONG, "bottleneck": 1024},
    "cdan": {**LONG, "bottleneck": 1024, "options": {"cdan": {"randomized": True, "dim": 51200}}},
    "dan": {**LONG, "bottleneck": 1024},
    "jan": {**LONG, "bottleneck": 1024},
    "mdd": {"epochs": 40, "iters": 5000, "bottleneck": 2048, "lr": 0.004},
    "mcd": {**LONG, "loss": {"mcd": 120.0}},
    "afn": {**LONG, "bottleneck": 1024, "lr": 0.002, "loss": {"afn": 0.01}},
    "mcc": {**LONG, "bottleneck": 2048, "lr": 0.005, "loss": {"mcc": 10.0}, "options": {"mcc": {"temperature": 2.0}}},
}


get_config, get_sweep = entry_points(pair_configs("domainnet", 345, CHANGES, DOMAINS), TASKS, "resnet101")
