"""configs/cifar_stl.py and configs/pacs.py: their numbers against Transfer-Learning-Library's scripts,
their table sweeps, and end-to-end runs on the miniature fakes (tests/fake_benchmarks.py) through
``jtl train`` (tiny: cifar_resnet8 at 32 px, a few steps). For PACS also what the recipe adds to
jtl.dg: frozen BatchNorm (running statistics, and with ``"all"`` scale and bias, exactly the start
values after training while the rest trained), Dropout before the head, and the training-domain
validation split (TLlib's 80 / 20 shuffle of each domain's ``all`` list, or the authors' val list)
checked against the fake's list files read here. Slow (``make test-slow``): the PACS run exactly as
configured (``"stats"``, TLlib's split) and the Dropout check."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

import fake_benchmarks
from jtl.config import load_config
from jtl.optim import make_schedule
from jtl.sweep.spec import load_sweep, override_args
from train_helpers import one_line_error, run_jtl

ROOT = Path(__file__).resolve().parents[1]
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
DOMAINS = {"A": "art_painting", "C": "cartoon", "P": "photo", "S": "sketch"}
TINY_DG = ["--config.model.name=cifar_resnet8", "--config.model.init=", "--config.data.image_size=32",
           "--config.batch_size=6", "--config.eval_batch_size=8"]


def cfg(spec, *overrides):
    """The resolved config; overrides as ``key=value`` or as the CLI's ``--config.key=value``."""
    return load_config(str(ROOT / "configs" / spec), [o.removeprefix("--config.") for o in overrides])


def get(c, dotted):
    for k in dotted.split("."):
        c = c[k]
    return c


# ---------------------------------------------------------------------------------- against TLlib's scripts
# examples/domain_generalization/image_classification: METHOD.py argparse defaults and the PACS lines of
# METHOD.sh ("-a resnet50 --freeze-bn --seed 0"; mixstyle.sh "--mix-layers layer1 layer2 layer3").
TLLIB_PACS = [
    ("pacs.py:erm,test=P", {"model.name": "resnet50", "model.num_classes": 7, "batch_size": 36,
                            "total_steps": 20 * 500, "eval_every": 500, "optim.lr": 1e-3, "optim.momentum": 0.9,
                            "optim.nesterov": True, "optim.weight_decay": 5e-4, "optim.schedule": "cosine",
                            "dg.freeze_bn": "stats", "dg.dropout": 0.1, "dg.test": (2,), "dg.val_split": "tllib",
                            "data.val_fraction": 0.2, "loss": {"ce": 1.0}}),
    ("pacs.py:irm,test=A", {"optim.lr": 5e-4, "loss_options.irm.weight": 1.0, "loss_options.irm.anneal_steps": 500,
                            "dg.test": (0,)}),
    ("pacs.py:vrex,test=C", {"optim.lr": 5e-4, "loss_options.vrex.weight": 3.0,
                             "loss_options.vrex.anneal_steps": 500, "dg.test": (1,)}),
    ("pacs.py:groupdro,test=S", {"optim.lr": 5e-4, "loss_options.groupdro.eta": 0.01, "loss": {"groupdro": 1.0},
                                 "dg.test": (3,)}),
    ("pacs.py:coral", {"optim.lr": 5e-4, "loss": {"ce": 1.0, "coral_domains": 1.0}}),
    ("pacs.py:mixstyle", {"optim.lr": 1e-3, "dg.mixstyle": ("layer1", "layer2", "layer3"), "dg.mixstyle_p": 0.5,
                          "dg.mixstyle_alpha": 0.1}),
]


@pytest.mark.parametrize("spec,want", TLLIB_PACS, ids=[s for s, _ in TLLIB_PACS])
def test_pacs_recipes_are_tllibs(spec, want):
    c = cfg(spec)
    for key, value in want.items():
        got = get(c, key)
        assert (dict(got) if key == "loss" else got) == value, key
    # 12 images of each of the three source domains per step; every learning rate the same (no --finetune)
    assert c.batch_size // (len(c.dg.domains) - len(c.dg.test)) == 12
    assert {m for _, _, m in c.optim.groups} == {1.0} and not c.freeze and not c.dg.disjoint


def test_pacs_schedule_is_torchs_cosine_annealing():
    """TLlib: CosineAnnealingLR(T_max = 20 x 500), stepped every iteration:
    lr_t = lr (1 + cos(pi t / T)) / 2."""
    c = cfg("pacs.py:erm")
    lr = make_schedule(c)
    for t in (0, 1, 2500, 5000, 9999, 10000):
        assert math.isclose(float(lr(t)), 1e-3 * (1 + math.cos(math.pi * t / 10000)) / 2, rel_tol=1e-5, abs_tol=1e-9)


def test_tllib_split_is_tllibs():
    """TLlib's split_dataset: a list of positions shuffled in place by RandomState(seed), the first
    int(0.8 n) train."""
    from jtl.dg.validation import tllib_positions

    for n in (1, 5, 6, 7, 10, 2048, 3929):
        for seed in (0, 1, 7):
            order = list(range(n))
            np.random.RandomState(seed).shuffle(order)
            train, val = tllib_positions(n, seed, 0.2)
            assert train.tolist() == order[: int(n * 0.8)] and val.tolist() == order[int(n * 0.8):]


def test_pacs_table_sweep_members_are_the_runs_themselves():
    members = load_sweep(str(ROOT / "configs/pacs.py:table"))
    assert len(members) == 6 * 4  # algorithms x held-out domains, TLlib's one seed
    for m in members[::5] + [members[-1]]:
        member = cfg("pacs.py:table", *override_args(m))
        test = "ACPS"[m["dg.test"][0]]
        alone = cfg(f"pacs.py:{m['dg.algorithm']},test={test},seed={m['seed']}")
        assert member.to_dict() == alone.to_dict(), m


def test_unknown_pacs_names_and_val_split_are_one_line(tmp_path):
    for arg, words in (("erm,test=X", ("held-out domain", "'X'")), ("table,algorithms=erm:mldg", ("mldg",))):
        one_line_error(run_jtl("train", "--config", ROOT / f"configs/pacs.py:{arg}", "--workdir", tmp_path / "x"),
                       *words)
    from jtl.dg.task import check_dg

    with pytest.raises(Exception, match="dg.val_split must be one of"):
        check_dg(cfg("pacs.py:erm", "--config.dg.val_split=authors"))
    with pytest.raises(Exception, match="freeze_bn needs a ResNet-family"):
        check_dg(cfg("pacs.py:erm", "--config.model.name=vit_tiny_patch16_224", "--config.model.init="))


def test_cifar_stl_recipe():
    """Both directions of the 9-class pair; TLlib's DANN defaults (no CIFAR-STL script), from scratch."""
    c = cfg("cifar_stl.py:dann,task=S2C")
    assert (c.data.train, c.adapt.target, tuple(c.data.eval)) == ("stl9", "cifar9", ("target_test=cifar9:test",))
    assert c.model.num_classes == 9 and c.model.init == "" and c.data.image_size == 32
    assert (c.optim.lr, c.batch_size, c.total_steps, c.adapt.bottleneck_dim) == (0.01, 32, 20 * 1000, 256)
    assert {m for _, _, m in c.optim.groups} == {1.0}  # from scratch: no backbone x0.1
    assert cfg("cifar_stl.py:mdd").data.train == "cifar9"  # C2S is the default task
    assert len(load_sweep(str(ROOT / "configs/cifar_stl.py:table,seeds=0"))) == 2 * 9


# ---------------------------------------------------------------------------------- end to end on the fakes
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for d in ("pacs", "cifar10", "stl10"):
        fake_benchmarks.make_layout(d, root)
    mp = pytest.MonkeyPatch()
    mp.setenv("JTL_DATA_DIR", str(root))
    yield root
    mp.undo()


def list_labels(data_dir, domain, split):
    """0-based labels of the fake's ``image_list/<domain>_<split>.txt``, in file order."""
    lines = (data_dir / "pacs" / "image_list" / f"{domain}_{split}.txt").read_text().split("\n")
    return np.asarray([int(line.split()[1]) - 1 for line in lines if line.strip()])


def support(labels):
    return np.bincount(labels, minlength=len(PACS_CLASSES)).tolist()


def final_variables(wd):
    from jtl.train.checkpoint import restore_variables

    v = restore_variables(wd, which="latest")
    return {k: traverse_util.flatten_dict(jax.device_get(v[k]), sep="/") for k in ("params", "batch_stats")}


def start_params(spec, overrides):
    """The parameters the run started from (model.init empty: drawn from the run's seed)."""
    from jtl.dg.model import build_model
    from jtl.models.transfer import initial_variables

    c = cfg(spec, *overrides)
    x0 = np.zeros((1, c.data.image_size, c.data.image_size, 3), np.float32)
    v = initial_variables(build_model(c), jax.random.key(c.seed), x0, as_family=True)
    return traverse_util.flatten_dict(v["params"], sep="/")


def bn_modules(batch_stats):
    return sorted({k.rsplit("/", 1)[0] for k in batch_stats})


@pytest.mark.parametrize("freeze,val", [pytest.param("stats", "tllib", marks=pytest.mark.slow), ("all", "published")])
def test_pacs_trains_with_frozen_batchnorm(data_dir, tmp_path, freeze, val):
    """TLlib's recipe as configured (BatchNorm statistics frozen, affine trained; TLlib's 80/20 split)
    and with ``dg.freeze_bn=all`` and the authors' val lists: held out P, seed 3, three steps."""
    wd = tmp_path / "run"
    spec = f"pacs.py:erm,test=P,seed=3,steps=3,val={val}"
    overrides = TINY_DG + [f"--config.dg.freeze_bn={freeze}"]
    rc, out, err = run_jtl("train", "--config", ROOT / "configs" / spec, "--workdir", wd, *overrides)
    assert rc == 0, err[-3000:]
    final = json.loads((wd / "summary.json").read_text())["final"]
    assert set(final) == {"val_A", "val_C", "val_P", "val_S", "test_P"}
    assert final["test_P"]["class_support"] == support(list_labels(data_dir, "photo", "all"))  # the whole domain
    for name, domain in DOMAINS.items():
        if val == "published":
            want = list_labels(data_dir, domain, "val")
        else:  # TLlib's split_dataset of the domain's "all" list, with the run's seed
            labels, order = list_labels(data_dir, domain, "all"), list(range(6))
            np.random.RandomState(3).shuffle(order)
            want = labels[order[int(len(labels) * 0.8):]]
            assert support(want) != support(list_labels(data_dir, domain, "val"))  # the two splits differ here
        assert final[f"val_{name}"]["class_support"] == support(want), name

    v = final_variables(wd)
    modules = bn_modules(v["batch_stats"])  # every module with a scale and a bias is a BatchNorm here
    assert modules == sorted({k.rsplit("/", 1)[0] for k in v["params"] if k.endswith("/scale")}) and modules
    for k, x in v["batch_stats"].items():  # fresh BatchNorm statistics: mean 0, var 1, never updated
        np.testing.assert_array_equal(x, np.zeros_like(x) if k.endswith("mean") else np.ones_like(x), err_msg=k)
    start = start_params(spec, overrides)
    affine = [f"{m}/{p}" for m in modules for p in ("scale", "bias")]
    for k in affine:
        np.testing.assert_array_equal(start[k], np.ones_like(start[k]) if k.endswith("scale") else 0 * start[k])
    changed = {k for k in start if not np.array_equal(start[k], v["params"][k])}
    assert set(start) - set(affine) <= changed  # every convolution and the head trained
    if freeze == "all":
        assert not changed & set(affine)
    else:  # TLlib trains the frozen BatchNorms' scale and bias
        assert set(affine) <= changed


@pytest.mark.slow
def test_dropout_before_the_head_only_in_training():
    """``dg.dropout``: in training the head reads a dropped-out pooled feature (zeros or x / (1 - p)),
    which is ``features["pooled"]``; in evaluation the model is the plain classifier."""
    from jtl.dg.model import build_model
    from jtl.models.transfer import initial_variables

    c = cfg("pacs.py:erm", *TINY_DG, "--config.dg.dropout=0.5", "--config.dg.freeze_bn=")
    model, plain = build_model(c), build_model(cfg("pacs.py:erm", *TINY_DG, "--config.dg.dropout=0",
                                                   "--config.dg.freeze_bn="))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    v = initial_variables(model, jax.random.key(0), x[:1], as_family=True)
    v["params"]["head"]["bias"] = np.arange(7, dtype=np.float32)
    logits, feats = model.apply(v, x, train=True, return_features=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(1)})[0]
    kept = np.asarray(feats["pooled"]) != 0
    pooled = np.asarray(feats["backbone_pooled"])
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(np.asarray(feats["pooled"])[kept], 2 * pooled[kept], rtol=1e-6)
    w, b = (np.asarray(v["params"]["head"][k]) for k in ("kernel", "bias"))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(feats["pooled"]) @ w + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.apply(v, x)), np.asarray(plain.apply(v, x)), rtol=1e-6)


def test_cifar_stl_trains_end_to_end(data_dir, tmp_path):
    """DANN on cifar9 -> stl9 through ``jtl train``: STL's frog-free nine classes tested whole."""
    wd = tmp_path / "dann"
    rc, out, err = run_jtl("train", "--config", ROOT / "configs/cifar_stl.py:dann,task=C2S,steps=2", "--workdir", wd,
                           "--config.model.name=cifar_resnet8", "--config.batch_size=4", "--config.eval_batch_size=8")
    assert rc == 0, err[-3000:]
    metrics = json.loads((wd / "summary.json").read_text())["final"]["target_test"]
    _, labels = fake_benchmarks.digit_images("stl10", "test")
    kept = [n for n in fake_benchmarks.STL10_NAMES if n != "monkey"]
    assert metrics["count"] == sum(fake_benchmarks.STL10_NAMES[y] in kept for y in labels)
    assert 0 <= metrics["top1"] <= 1
    recorded = json.loads((wd / "config.json").read_text())
    assert (recorded["data"]["train"], recorded["adapt"]["target"]) == ("cifar9", "stl9")
