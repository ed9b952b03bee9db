"""Domain generalization on Rotated Fashion-MNIST (DomainBed's RotatedMNIST protocol on Fashion-MNIST).

Domains: Fashion-MNIST's 10,000 test images rotated by exactly 0, 15, 30, 45, 60 and 75 degrees
(``fashion_mnist:angle@D``), each domain keeping its own sixth of the images (``dg.disjoint``);
``test`` names the held-out angle(s) by index. One run::

    jtl train --config configs/dg_rotated_fmnist.py:irm,test=5 --workdir runs/dg/irm_75

ARG = ``ALGORITHM[,test=I[+J]][,steps=N][,per_domain=B][,size=PX][,limit=N][,test_limit=N]
[,eval_every=N][,base=DATASET]`` (ALGORITHM: a key of :data:`jtl.methods.DG_METHODS`; ``test=5+4``
holds out two domains: a leave-one-domain-out validation run). DomainBed's sweep::

    jtl sweep --config configs/dg_rotated_fmnist.py:sweep,algorithms=erm+irm,n_hparams=3,seeds=0+1 \\
        --workdir runs/dg_sweep
    jtl collect --domainbed runs/dg_sweep

``get_sweep``: for every algorithm, held-out domain and hyperparameter draw ``h`` (``h = 0``: the
defaults; ``h > 0``: DomainBed's random distributions, drawn with ``default_rng([crc32(algorithm), h])``),
every trial seed; with ``lodo=1`` also every pair (held-out, one more) for leave-one-domain-out
selection. Measured numbers: docs/domain-generalization.md (scripts/dg_results.py).
"""

import zlib

import ml_collections

from jtl.config import config_args
from jtl.methods import DG_METHODS, dg_method
from jtl.sweep import log_uniform, random_search
from jtl.sweep.spec import Sampler

ANGLES = (0, 15, 30, 45, 60, 75)  # DomainBed's RotatedMNIST (Ghifary et al. 2015)
DOMAINBED_STEPS = 5000  # DomainBed's run length: annealing steps are drawn for it, then scaled to ours
OPTIONS = {"test": "5", "steps": "300", "per_domain": "16", "size": "16", "limit": "0", "test_limit": "2000",
           "eval_every": "25", "base": "fashion_mnist"}
SWEEP = {"algorithms": "+".join(DG_METHODS), "n_hparams": "1", "seeds": "0+1+2", "tests": "all", "lodo": "0"}


def _args(arg) -> dict:
    """ARG's options; ``sweep,...`` (what ``jtl sweep`` passes to get_config too) builds ERM's config."""
    a = config_args(arg, ("algorithm",), algorithm="erm", **OPTIONS, **SWEEP)
    if a["algorithm"] == "sweep":
        a["algorithm"] = "erm"
    return a


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split("+") if t)


def get_config(arg=None):
    a = _args(arg)
    m = dg_method(a["algorithm"])
    steps, test = int(a["steps"]), _tuple(a["test"])
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "cifar_resnet8", "num_classes": 10})
    c.data = ml_collections.ConfigDict({"eval": (), "image_size": int(a["size"]), "channels": 1,
                                        "normalize": "dataset", "augment": (), "val_fraction": 0.2,
                                        "limit": int(a["limit"])})
    c.dg = ml_collections.ConfigDict({
        "domains": tuple(f"{a['base']}:angle@{d}" for d in ANGLES), "names": tuple(str(d) for d in ANGLES),
        "test": test, "algorithm": a["algorithm"], "test_limit": int(a["test_limit"])})
    c.batch_size = int(a["per_domain"]) * (len(ANGLES) - len(test))
    c.eval_batch_size, c.total_steps = 500, steps
    c.eval_every, c.log_every, c.checkpoint_every, c.keep_checkpoints = int(a["eval_every"]), int(a["eval_every"]), 0, 1
    # DomainBed: Adam, lr 1e-3, no weight decay, no schedule.
    c.optim = ml_collections.ConfigDict({"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"})
    c.loss = m["loss"]
    options = {k: dict(v) for k, v in m["options"].items()}
    for piece in ("irm", "vrex"):  # DomainBed anneals for 500 of 5000 steps: the same share of ours
        if piece in options:
            options[piece]["anneal_steps"] = max(1, options[piece]["anneal_steps"] * steps // DOMAINBED_STEPS)
    c.loss_options = ml_collections.ConfigDict(options)
    for key, value in m["config"].items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _anneal(steps: int) -> Sampler:
    """DomainBed's ``int(10 ** U(0, 4))`` annealing steps, scaled from its 5000 steps to ``steps``."""
    return Sampler(lambda rng: max(1, int(10 ** rng.uniform(0, 4) * steps / DOMAINBED_STEPS)),
                   f"int(10**U(0, 4)) * {steps}/{DOMAINBED_STEPS}")


def search_space(algorithm: str, steps: int) -> dict:
    """DomainBed's random hyperparameter distributions (small images) for ``algorithm``."""
    space = {"optim.lr": log_uniform(10 ** -4.5, 10 ** -2.5)}
    if algorithm in ("irm", "vrex"):
        space[f"loss_options.{algorithm}.weight"] = log_uniform(10 ** -1, 10 ** 5)
        space[f"loss_options.{algorithm}.anneal_steps"] = _anneal(steps)
    elif algorithm == "groupdro":
        space["loss_options.groupdro.eta"] = log_uniform(10 ** -3, 10 ** -1)
    elif algorithm in ("coral", "mmd"):
        space[f"loss.{algorithm}_domains"] = log_uniform(10 ** -1, 10 ** 1)  # DomainBed's mmd_gamma
    return space


def get_sweep(arg=None):
    a = _args(arg)
    steps = int(a["steps"])
    tests = range(len(ANGLES)) if a["tests"] == "all" else _tuple(a["tests"])
    held_out = [(t,) for t in tests]
    if a["lodo"] == "1":
        held_out += [(t, j) for t in tests for j in range(len(ANGLES)) if j != t]
    seeds = _tuple(a["seeds"])
    runs = []
    for algorithm in a["algorithms"].split("+"):
        dg_method(algorithm)  # an unknown name is a one-line error
        space = search_space(algorithm, steps)
        draws = random_search(space, int(a["n_hparams"]), (0,), seed=zlib.crc32(algorithm.encode()))
        for h, drawn in enumerate(draws):
            drawn = {} if h == 0 else {k: v for k, v in drawn.items() if k != "seed"}  # draw 0: the defaults
            for test in held_out:
                for seed in seeds:
                    runs.append({"algorithm": algorithm, "test": test, "hparams": h, "seed": seed, **drawn})
    return [_overrides(r, a) for r in runs]


def _overrides(run: dict, a: dict) -> dict:
    """A member's overrides of the config ``ALGORITHM,...`` built from its own ARG-free defaults."""
    arg = ",".join([run["algorithm"], f"test={'+'.join(map(str, run['test']))}"]
                   + [f"{k}={a[k]}" for k in OPTIONS if k != "test"])
    base = get_config(arg).to_dict()
    out = {"dg.test": tuple(run["test"]), "dg.algorithm": run["algorithm"], "dg.hparams_seed": run["hparams"],
           "seed": run["seed"], "loss": base["loss"], "batch_size": base["batch_size"]}
    for piece, opts in base["loss_options"].items():
        for k, v in opts.items():
            out[f"loss_options.{piece}.{k}"] = v
    for key in DG_METHODS[run["algorithm"]].get("config", {}):
        node = base
        for part in key.split("."):
            node = node[part]
        out[key] = tuple(node) if isinstance(node, list) else node
    out.update({k: v for k, v in run.items() if "." in k})
    return out

