"""Transfer-Learning-Library's (TLlib) recipes for the standard domain-adaptation benchmarks
(shared by configs/office31.py, office_home.py, visda2017.py, domainnet.py, digits_tllib.py;
not a config itself).

Every number comes from TLlib (github.com/thuml/Transfer-Learning-Library, paths below in
``examples/domain_adaptation/image_classification``): a method's defaults are its ``METHOD.py``
argparse defaults, and each benchmark's changes are that benchmark's lines of ``METHOD.sh``.
In jtl's terms (docs/adaptation.md, "Against the papers and Transfer-Learning-Library"):

- SGD (Nesterov, momentum 0.9 where TLlib has them), backbone learning rate x0.1 when fine-tuning
  (TLlib's ``get_parameters``), the schedule ``lr (1 + gamma i)^-0.75`` over iterations i: jtl's
  ``inv`` schedule with ``optim.inv_gamma = gamma * total_steps``; MCD and AFN keep lr constant;
- the reversal warm-up ``2 / (1 + exp(-i / 1000)) - 1`` (``tllib/modules/grl.py``):
  ``loss_options.<piece>.alpha = total_steps / 1000``;
- iterations = epochs x iterations per epoch; batch 32 (36 for MCC) per domain;
- TLlib's heads and loss conventions through jtl's switches (``adapt.classifier`` ...,
  ``loss_options.<piece>.convention`` ...);
- TLlib's image transforms (``utils.py``, ``get_train_transform`` / ``get_val_transform``), by its
  ``--train-resizing`` / ``--val-resizing`` / ``--no-hflip``: :func:`tllib_transforms`.

Differences that remain (no switch): MCD's and AFN's backbone SGD has no momentum in TLlib (jtl: one
momentum for all parameters). DAN's, JAN's and AFN's bottlenecks have dropout in TLlib. TLlib reports the
best epoch's target accuracy (its validation set is the target test set); jtl's table reports the
last step's, and keeps the best checkpoint by it (``best_metric``).
"""

import ml_collections

from jtl.config import config_args, resolve

SEEDS = (0, 1, 2)

# Per method: TLlib's METHOD.py defaults. "mult": the backbone's learning-rate multiplier.
RECIPES = {
    "source_only": dict(loss={"ce": 1.0}, lr=0.001, gamma=0.0003, wd=5e-4, bottleneck=0, epochs=20, iters=500),
    "dann": dict(loss={"ce": 1.0, "dann": 1.0}, lr=0.01, gamma=0.001, wd=1e-3, bottleneck=256, epochs=20,
                 iters=1000, adapt={"disc_norm": "batchnorm"}, warmup="dann"),
    "cdan": dict(loss={"ce": 1.0, "cdan": 1.0}, lr=0.01, gamma=0.001, wd=1e-3, bottleneck=256, epochs=20,
                 iters=1000, options={"cdan": {"entropy": False, "normalize": "joint"}},
                 adapt={"disc_norm": "batchnorm"}, warmup="cdan"),
    "dan": dict(loss={"ce": 1.0, "mmd": 1.0}, lr=0.003, gamma=0.0003, wd=5e-4, bottleneck=256, epochs=20, iters=500,
                options={"mmd": {"alphas": (0.125, 0.25, 0.5, 1.0, 2.0), "linear": True, "pairs": "circular",
                                 "bandwidth": "tllib"}},
                adapt={"forward": "separate"}),
    "jan": dict(loss={"ce": 1.0, "jmmd": 1.0}, lr=0.003, gamma=0.0003, wd=5e-4, bottleneck=256, epochs=20, iters=500,
                options={"jmmd": {"alphas_per_layer": ((0.125, 0.25, 0.5, 1.0, 2.0), (1.0,)), "bandwidth": "tllib"}}),
    "mdd": dict(loss={"ce": 1.0, "mdd": 1.0}, lr=0.004, gamma=0.0002, wd=5e-4, bottleneck=1024, epochs=20, iters=1000,
                options={"mdd": {"margin": 4.0, "high": 0.1, "convention": "tllib"}},
                adapt={"bottleneck": "bn_relu_dropout", "classifier": "mlp", "classifier_width": 1024},
                warmup="mdd"),
    "mcd": dict(loss={"ce": 1.0, "mcd": 1.0}, lr=0.001, gamma=0.0, wd=5e-4, bottleneck=0, epochs=20, iters=1000,
                mult=1.0, options={"mcd": {"balance_weight": 0.01}},
                adapt={"classifier": "mlp_bn", "classifier_width": 1024, "mcd_generator_steps": 4}),
    "afn": dict(loss={"ce": 1.0, "afn": 0.05}, lr=0.001, gamma=0.0, wd=5e-4, bottleneck=1000, epochs=20, iters=500,
                mult=1.0, options={"afn": {"delta": 1.0}}),
    "mcc": dict(loss={"ce": 1.0, "mcc": 1.0}, lr=0.005, gamma=0.001, wd=1e-3, bottleneck=256, epochs=20, iters=1000,
                batch=36, options={"mcc": {"temperature": 2.5}}),
}
METHODS = tuple(RECIPES)


def recipe(method: str, changes: dict | None = None) -> dict:
    """TLlib's recipe of ``method`` with a benchmark's ``changes`` (its ``METHOD.sh`` line):
    top-level keys replace, ``options`` / ``adapt`` merge per piece / key, ``loss`` weights merge."""
    if method not in RECIPES:
        raise ValueError(f"unknown method {method!r}; TLlib recipes: {', '.join(METHODS)}")
    r = {"batch": 32, "mult": 0.1, "momentum": 0.9, "nesterov": True, "options": {}, "adapt": {}, "warmup": None,
         **RECIPES[method]}
    for key, value in (changes or {}).items():
        if key == "options":
            r["options"] = {p: {**r["options"].get(p, {}), **o} for p, o in {**r["options"], **value}.items()}
        elif key in ("adapt", "loss"):
            r[key] = {**r[key], **value}
        else:
            r[key] = value
    return r


# TLlib's --train-resizing: every mode but "res." first resizes to 256 x 256 (``ResizeImage(256)``:
# PIL's resize with its default filter, bicubic), then "default" takes RandomResizedCrop(224) (scale
# 0.08-1, ratio 3/4-4/3: jtl's "crop"), "cen.crop" CenterCrop(224), "ran.crop" RandomCrop(224);
# "res." resizes to the image size (``ResizeImage(resize_size)``). --val-resizing "default": 256, then
# CenterCrop(224); "res.": resize only. Then RandomHorizontalFlip unless --no-hflip.
TRAIN_CROPS = {"default": ("crop",), "cen.crop": ("center_crop",), "ran.crop": ("random_crop",), "res.": ()}


def tllib_transforms(train_resizing: str = "default", val_resizing: str = "default", hflip: bool = True, *,
                     image_size: int) -> dict:
    """``data.resize``, ``data.augment`` and ``data.eval_crop`` of TLlib's transforms (comment above).
    jtl resizes train and test images alike (one ``data.resize``), so "res." goes with "res."."""
    if train_resizing not in TRAIN_CROPS or val_resizing not in ("default", "res.") or \
            (train_resizing == "res.") != (val_resizing == "res."):
        raise ValueError(f"TLlib resizing {train_resizing!r} / {val_resizing!r}: jtl has "
                         f"{', '.join(TRAIN_CROPS)} with 'default', and 'res.' with 'res.'")
    res = train_resizing == "res."
    return {"resize": image_size if res else 256, "augment": TRAIN_CROPS[train_resizing] + (("flip",) if hflip else ()),
            "eval_crop": "none" if res else "center"}


def benchmark_args(arg, tasks, **more) -> dict:
    """``METHOD[,task=T][,seed=S][,arch=A][,steps=N]`` or ``table[,methods=M:M][,tasks=T:T][,seeds=S:S]``."""
    a = config_args(arg, ("method",), method="dann", task=tasks[0], seed="0", arch="", steps="0", methods="",
                    tasks="", seeds="", **more)
    a["tasks"] = tuple(a["tasks"].split(":")) if a["tasks"] else tuple(tasks)
    for t in (a["task"],) + a["tasks"]:
        if t not in tasks:
            raise ValueError(f"unknown task {t!r}; tasks: {', '.join(tasks)}")
    return a


def tllib_config(method: str, *, source: str, target: str, eval_split: str, num_classes: int, arch: str,
                 image_size: int, changes: dict | None = None, seed: int = 0, steps: int = 0, channels: int = 3,
                 train_split: str = "train", target_split: str = "train", normalize: str = "imagenet",
                 train_resizing: str = "default", val_resizing: str = "default", hflip: bool = True,
                 pretrained: bool = True) -> ml_collections.ConfigDict:
    """The run of ``method`` on ``source -> target`` as TLlib trains it (module docstring);
    ``steps`` > 0 shortens the run, with the schedule and warm-up rescaled to the same per-iteration
    constants; ``train_resizing``, ``val_resizing``, ``hflip``: TLlib's switches (:func:`tllib_transforms`)."""
    r = recipe(method, changes)
    total = steps or r["epochs"] * r["iters"]
    c = ml_collections.ConfigDict()
    c.seed = seed
    c.model = ml_collections.ConfigDict({"name": arch, "num_classes": num_classes,
                                         "init": f"{arch}.tv_in1k" if pretrained else ""})
    c.data = ml_collections.ConfigDict({
        "train": source, "train_split": train_split, "image_size": image_size, "channels": channels,
        "normalize": normalize, "eval": (f"target_test={target}:{eval_split}",),
        **tllib_transforms(train_resizing, val_resizing, hflip, image_size=image_size)})
    c.adapt = ml_collections.ConfigDict({"target": target, "target_split": target_split,
                                         "bottleneck_dim": r["bottleneck"], **r["adapt"]})
    c.loss = dict(r["loss"])
    options = {p: dict(o) for p, o in r["options"].items()}
    if r["warmup"]:  # TLlib's reversal warm-up over i / 1000 iterations
        options[r["warmup"]] = {**options.get(r["warmup"], {}), "alpha": total / 1000}
    c.loss_options = ml_collections.ConfigDict(options)
    c.batch_size, c.eval_batch_size, c.total_steps = r["batch"], 128, total
    mult = r["mult"] if pretrained else 1.0
    c.optim = ml_collections.ConfigDict({
        "name": "sgd", "lr": r["lr"], "momentum": r["momentum"], "nesterov": r["nesterov"], "weight_decay": r["wd"],
        "schedule": "inv" if r["gamma"] else "constant", "inv_gamma": r["gamma"] * total, "inv_power": 0.75,
        "groups": (("backbone", r"^backbone/", mult), ("heads", r"^(?!backbone/)", 1.0))})
    c.eval_every = c.checkpoint_every = max(total // r["epochs"], 1)  # once per TLlib epoch
    c.best_metric = "target_test/top1"
    c.log_every = 100
    c.progress = False
    return c


def pair_configs(dataset: str, num_classes: int, changes: dict, domains: dict | None = None, **kw):
    """``make_config(method, task, seed, *, arch, steps)`` of a benchmark whose task ``S2T`` adapts
    ``dataset:S`` to ``dataset:T`` (``domains`` maps task letters to domain names), tested on ``T``'s
    ``test`` split; ``changes``: the benchmark's lines of TLlib's METHOD.sh, by method."""

    def make_config(method, task, seed, *, arch, steps):
        source, target = ((domains or {}).get(d, d) for d in task.split("2"))
        return tllib_config(method, source=f"{dataset}:{source}", target=f"{dataset}:{target}", eval_split="test",
                            num_classes=num_classes, arch=arch, image_size=224, changes=changes.get(method),
                            seed=seed, steps=steps, **kw)

    return make_config


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if k in ("loss", "loss_options") and not prefix:
            out[k] = v  # replaced whole
        elif isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def table_sweep(make_config, base_arg: dict) -> list[dict]:
    """Every (task, method, seed) of a table as override dicts against the table's base config
    (``make_config(method, task, seed)``): only the keys that differ. Members that differ only in
    numbers (the seeds of one task and method) train as one vectorized program."""
    methods = tuple(base_arg["methods"].split(":")) if base_arg["methods"] else METHODS
    for m in methods:
        recipe(m)  # an unknown method is an error here, not in one member
    seeds = tuple(int(s) for s in base_arg["seeds"].split(":")) if base_arg["seeds"] else SEEDS
    resolved = lambda m, t: _flat(resolve(make_config(m, t, 0)).to_dict())  # noqa: E731 - defaults included
    base = resolved(methods[0], base_arg["tasks"][0])
    out = []
    for task in base_arg["tasks"]:
        for m in methods:
            member = resolved(m, task)
            diff = {k: v for k, v in member.items() if base.get(k) != v}
            out.extend({**diff, "seed": s} for s in seeds)
    return out


def entry_points(make_config, tasks, arch: str):
    """A benchmark config's ``get_config`` and ``get_sweep`` from its
    ``make_config(method, task, seed, arch=..., steps=...)`` (ARG: :func:`benchmark_args`)."""

    def parse(arg):
        a = benchmark_args(arg, tasks)
        a["make"] = lambda m, t, s: make_config(m, t, s, arch=a["arch"] or arch, steps=int(a["steps"]))
        if a["method"] != "table":  # one method and task (the sweep: its seeds)
            a["methods"], a["tasks"] = a["method"], (a["task"],)
        return a

    def get_config(arg=None):
        a = parse(arg)
        if a["method"] != "table":
            return a["make"](a["method"], a["task"], int(a["seed"]))
        return a["make"]((a["methods"] or METHODS[0]).split(":")[0], a["tasks"][0], 0)

    def get_sweep(arg=None):
        a = parse(arg)
        return table_sweep(a["make"], a)

    return get_config, get_sweep
