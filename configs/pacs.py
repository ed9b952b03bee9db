"""PACS domain generalization (Li et al., ICCV 2017) under Transfer-Learning-Library's (TLlib) recipe:
leave one domain out (A art_painting, C cartoon, P photo, S sketch), train on the other three, test on
the whole held-out domain.

ARG: ``ALGORITHM[,test=P][,seed=0][,arch=resnet50][,steps=N][,val=tllib]`` for one run;
``table[,algorithms=erm:irm][,tests=A:C:P:S][,seeds=0]`` for :func:`get_sweep` (every algorithm x
held-out domain x seed). ALGORITHM: erm, mixstyle, irm, vrex, groupdro, coral. One run, and the table::

    jtl train --config configs/pacs.py:erm,test=P --workdir runs/pacs/erm_P
    jtl sweep --config configs/pacs.py:table --workdir runs/pacs
    jtl collect --domainbed runs/pacs

Expected (TLlib's README, "PACS accuracy on ResNet-50", held-out domain top-1 %, the epoch of best
source-domain validation accuracy; one seed):

| algorithm | avg | A | C | P | S |
|---|---|---|---|---|---|
| erm | 86.4 | 88.5 | 78.4 | 97.2 | 81.4 |
| mixstyle | 87.4 | 87.8 | 82.3 | 95.0 | 84.5 |
| irm | 86.9 | 88.0 | 82.5 | 98.0 | 79.0 |
| vrex | 87.0 | 87.2 | 82.3 | 97.4 | 81.0 |
| groupdro | 87.3 | 88.9 | 81.7 | 97.8 | 80.8 |
| coral | 86.4 | 89.1 | 80.0 | 97.4 | 79.1 |

TLlib's IBN-Net (87.8) and MLDG (87.2) rows are not here: jtl has neither.

The recipe, from TLlib's ``examples/domain_generalization/image_classification``: ``METHOD.sh`` (the
PACS lines: ``-a resnet50 --freeze-bn --seed 0``) and ``METHOD.py`` / ``utils.py`` defaults:

- ResNet-50, torchvision's ImageNet weights; no bottleneck; every BatchNorm on its running
  averages, never updated (``--freeze-bn``: ``dg.freeze_bn = "stats"``; TLlib still trains their
  scale and bias, ``"all"`` would freeze those too); Dropout(0.1) on the pooled feature before the
  head (``--dropout-p``: ``dg.dropout``); the same learning rate for backbone and head (no ``--finetune``);
- SGD, Nesterov momentum 0.9, weight decay 5e-4, learning rate 1e-3 (5e-4 for IRM, V-REx, Group
  DRO, CORAL), cosine to zero over 20 epochs x 500 iterations; batch 36 = 12 from each source domain;
- IRM: penalty weight 1, V-REx: 3, both 1 for the first 500 iterations, the optimizer restarted
  there; Group DRO: eta 0.01; CORAL: weight 1 (on the dropped-out feature); MixStyle after
  layer1-3, p 0.5, alpha 0.1, mixing across domains;
- train images: random resized crop of 224 with scale (0.7, 1), flip, colour jitter 0.3;
  test: the image resized to 224 x 224;
- validation: TLlib does not use the authors' val lists: each domain's ``all`` list is shuffled with
  the seed and split 80 / 20 (``dg.val_split = "tllib"``); ``val=published`` picks the authors'
  train / val lists instead. The held-out domain is tested on all its images.

What still differs: TLlib's ERM draws each batch of 36 from the pooled source images and its
MixStyle draws 18 from each of two random domains (jtl: 12 from each of the three); TLlib restarts
the cosine schedule after the IRM / V-REx anneal step; its colour jitter also shifts hue by up to
0.3 and it turns 10 % of images grey (jtl's jitter has neither); TLlib picks the best epoch by the
pooled source validation accuracy, ``jtl collect --domainbed`` by the mean over source domains.
"""

import ml_collections

from jtl.config import config_args, resolve

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
NAMES = ("A", "C", "P", "S")
EPOCHS, ITERS = 20, 500
ANNEAL = 500  # TLlib's --anneal-iters (IRM, V-REx)
# TLlib's METHOD.py defaults per algorithm: loss pieces, their options, learning rate, DG switches.
ALGORITHMS = {
    "erm": dict(loss={"ce": 1.0}, lr=1e-3),
    "mixstyle": dict(loss={"ce": 1.0}, lr=1e-3, dg={"mixstyle": ("layer1", "layer2", "layer3"),
                                                    "mixstyle_mode": "crossdomain"}),
    "irm": dict(loss={"ce": 1.0, "irm": 1.0}, lr=5e-4, options={"irm": {"weight": 1.0, "anneal_steps": ANNEAL}}),
    "vrex": dict(loss={"ce": 1.0, "vrex": 1.0}, lr=5e-4, options={"vrex": {"weight": 3.0, "anneal_steps": ANNEAL}}),
    "groupdro": dict(loss={"groupdro": 1.0}, lr=5e-4, options={"groupdro": {"eta": 0.01}}),
    "coral": dict(loss={"ce": 1.0, "coral_domains": 1.0}, lr=5e-4),
}
OPTIONS = {"test": "P", "seed": "0", "arch": "resnet50", "steps": "0", "val": "tllib"}
TABLE = {"algorithms": "", "tests": "", "seeds": "0"}
MEMBER_KEYS = ("dg.test", "dg.algorithm", "seed", "loss", "loss_options", "optim.lr", "dg.mixstyle",
               "dg.mixstyle_mode")


def _args(arg) -> dict:
    a = config_args(arg, ("algorithm",), algorithm="erm", **OPTIONS, **TABLE)
    for name in [a["algorithm"]] * (a["algorithm"] != "table") + [x for x in a["algorithms"].split(":") if x]:
        if name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {name!r}; TLlib's PACS recipes: {', '.join(ALGORITHMS)}")
    for t in [a["test"]] + [x for x in a["tests"].split(":") if x]:
        if t not in NAMES:
            raise ValueError(f"unknown held-out domain {t!r}; domains: {', '.join(NAMES)}")
    return a


def make_config(algorithm: str, test: str, seed: int, *, arch: str, steps: int, val: str):
    """The run of ``algorithm`` holding out domain ``test`` as TLlib trains it (module docstring);
    ``steps`` > 0 shortens it, the anneal step scaled with it."""
    r = ALGORITHMS[algorithm]
    total = steps or EPOCHS * ITERS
    c = ml_collections.ConfigDict()
    c.seed = seed
    c.model = ml_collections.ConfigDict({"name": arch, "num_classes": 7, "init": f"{arch}.tv_in1k"})
    c.data = ml_collections.ConfigDict({
        "eval": (), "image_size": 224, "channels": 3, "normalize": "imagenet", "val_fraction": 0.2,
        "augment": (("crop", {"scale": (0.7, 1.0)}), "flip",
                    ("jitter", {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3}))})
    c.dg = ml_collections.ConfigDict({
        "domains": tuple(f"pacs:{d}" for d in DOMAINS), "names": NAMES, "test": (NAMES.index(test),),
        "algorithm": algorithm, "disjoint": False, "freeze_bn": "stats", "dropout": 0.1, "val_split": val,
        "mixstyle": (), "mixstyle_mode": "random", **r.get("dg", {})})
    c.loss = dict(r["loss"])
    options = {p: dict(o) for p, o in r.get("options", {}).items()}
    for o in options.values():
        if "anneal_steps" in o:
            o["anneal_steps"] = max(1, o["anneal_steps"] * total // (EPOCHS * ITERS))
    c.loss_options = ml_collections.ConfigDict(options)
    c.batch_size, c.eval_batch_size, c.total_steps = 36, 128, total
    c.optim = ml_collections.ConfigDict({"name": "sgd", "lr": r["lr"], "momentum": 0.9, "nesterov": True,
                                         "weight_decay": 5e-4, "schedule": "cosine"})
    c.eval_every = c.checkpoint_every = max(total // EPOCHS, 1)  # once per TLlib epoch
    c.keep_checkpoints, c.log_every, c.progress = 1, 100, False
    return c


def _make(a, algorithm, test, seed):
    return make_config(algorithm, test, seed, arch=a["arch"], steps=int(a["steps"]), val=a["val"])


def get_config(arg=None):
    a = _args(arg)
    if a["algorithm"] != "table":
        return _make(a, a["algorithm"], a["test"], int(a["seed"]))
    algorithms, tests, seeds = _table(a)
    return _make(a, algorithms[0], tests[0], seeds[0])


def _table(a):
    return ((a["algorithms"].split(":") if a["algorithms"] else tuple(ALGORITHMS)),
            (a["tests"].split(":") if a["tests"] else NAMES), tuple(int(s) for s in a["seeds"].split(":")))


def get_sweep(arg=None):
    """Every algorithm x held-out domain x seed of the table, as overrides of :func:`get_config`'s
    base (the keys in which TLlib's per-algorithm recipes differ)."""
    a = _args(arg)
    algorithms, tests, seeds = _table(a) if a["algorithm"] == "table" else ((a["algorithm"],), (a["test"],),
                                                                            (int(a["seed"]),))
    members = []
    for algorithm in algorithms:
        for test in tests:
            for seed in seeds:
                c = resolve(_make(a, algorithm, test, seed)).to_dict()  # defaults included (loss_options.ce)
                member = {}
                for key in MEMBER_KEYS:
                    node = c
                    for part in key.split("."):
                        node = node[part]
                    member[key] = tuple(node) if isinstance(node, list) else node
                members.append(member)
    return members
