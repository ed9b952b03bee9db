"""The TLlib benchmark configs (configs/office31.py, office_home.py, visda2017.py, domainnet.py,
digits_tllib.py): their numbers against TLlib's scripts and formulas, their table sweeps, and
end-to-end runs on the miniature benchmark fakes through ``jtl train``, ``jtl sweep`` and ``jtl collect``
(tiny: cifar_resnet8 at 32 px, two steps)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import fake_benchmarks
from jtl.config import load_config, resolve
from jtl.losses import grl_coeff
from jtl.optim import make_schedule
from jtl.sweep.spec import load_sweep, override_args
from train_helpers import run_jtl

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"office31": 6, "office_home": 12, "visda2017": 1, "domainnet": 12, "digits_tllib": 3}  # tasks
METHODS = ("source_only", "dann", "cdan", "dan", "jan", "mdd", "mcd", "afn", "mcc")
TINY = ["--config.model.name=cifar_resnet8", "--config.model.init=", "--config.data.image_size=32",
        "--config.batch_size=4", "--config.eval_batch_size=8", "--config.adapt.classifier_width=16"]


def cfg(spec, *overrides):
    return load_config(str(ROOT / "configs" / spec), list(overrides))


# ---------------------------------------------------------------------------------- against TLlib's scripts
# (spec, {key: value}) as TLlib's METHOD.py defaults and METHOD.sh lines give them (iterations =
# epochs x iterations per epoch; lr in TLlib's per-iteration inverse decay).
TLLIB = [
    ("office31.py:dann,task=A2W", {"model.name": "resnet50", "total_steps": 20 * 1000, "optim.lr": 0.01,
                                   "optim.weight_decay": 1e-3, "batch_size": 32, "adapt.bottleneck_dim": 256,
                                   "adapt.disc_norm": "batchnorm", "optim.nesterov": True}),
    ("office31.py:source_only,task=W2A", {"total_steps": 5 * 500, "optim.lr": 0.001, "adapt.bottleneck_dim": 0}),
    ("office31.py:mdd,task=D2A", {"total_steps": 20 * 1000, "optim.lr": 0.004, "adapt.bottleneck_dim": 1024,
                                  "adapt.classifier": "mlp", "adapt.bottleneck": "bn_relu_dropout",
                                  "loss_options.mdd.margin": 4.0, "loss_options.mdd.convention": "tllib"}),
    ("office31.py:mcd,task=A2D", {"total_steps": 20 * 500, "loss.mcd": 10.0, "optim.schedule": "constant",
                                  "optim.lr": 0.001, "adapt.bottleneck_dim": 0, "adapt.classifier": "mlp_bn",
                                  "loss_options.mcd.balance_weight": 0.01, "adapt.mcd_generator_steps": 4}),
    ("office31.py:afn,task=A2W", {"loss.afn": 0.05, "loss.entropy": 0.1, "adapt.bottleneck_dim": 1000,
                                  "total_steps": 20 * 500, "optim.schedule": "constant"}),
    ("office31.py:mcc,task=A2W", {"batch_size": 36, "adapt.bottleneck_dim": 1024, "total_steps": 20 * 500,
                                  "optim.lr": 0.005, "loss_options.mcc.temperature": 2.5}),
    ("office31.py:dan,task=A2W", {"optim.lr": 0.003, "optim.weight_decay": 5e-4, "total_steps": 20 * 500,
                                  "adapt.forward": "separate", "loss_options.mmd.linear": True,
                                  "loss_options.mmd.alphas": (0.125, 0.25, 0.5, 1.0, 2.0)}),
    ("office_home.py:mdd,task=Rw2Pr", {"total_steps": 30 * 1000, "adapt.bottleneck_dim": 2048}),
    ("office_home.py:mcd,task=Ar2Cl", {"loss.mcd": 30.0, "total_steps": 20 * 500}),
    ("visda2017.py:mdd", {"model.name": "resnet101", "batch_size": 36, "total_steps": 30 * 1000,
                          "data.augment": ("center_crop", "flip"), "data.resize": 256, "data.eval_crop": "center",
                          "best_metric": "target_test/macro_recall"}),
    ("visda2017.py:afn", {"loss_options.afn.delta": 0.3, "total_steps": 10 * 1000, "batch_size": 36}),
    ("domainnet.py:cdan,task=c2p", {"loss_options.cdan.randomized": True, "loss_options.cdan.dim": 51200,
                                    "adapt.bottleneck_dim": 1024, "total_steps": 30 * 2500,
                                    "data.eval": ("target_test=domainnet:painting:test",)}),
    ("domainnet.py:mdd,task=s2r", {"total_steps": 40 * 5000, "adapt.bottleneck_dim": 2048, "optim.lr": 0.004}),
    ("domainnet.py:mcd,task=p2s", {"loss.mcd": 120.0}),
    ("digits_tllib.py:dann,task=U2M", {"optim.lr": 0.1, "batch_size": 128, "total_steps": 20 * 2500,
                                       "model.init": "", "data.channels": 1, "data.image_size": 28}),
    ("digits_tllib.py:dann,task=S2M", {"optim.lr": 0.03, "data.channels": 3, "data.image_size": 32}),
    ("digits_tllib.py:mcd,task=M2U", {"loss.mcd": 0.3, "loss_options.mcd.balance_weight": 0.03}),
]


def get(c, dotted):
    for k in dotted.split("."):
        c = c[k]
    return c


@pytest.mark.parametrize("spec,want", TLLIB, ids=[s for s, _ in TLLIB])
def test_recipes_are_tllibs(spec, want):
    c = cfg(spec)
    for key, value in want.items():
        assert get(c, key) == value, key


def test_schedules_are_tllibs_per_iteration():
    """TLlib: lr_i = lr (1 + gamma i)^-0.75 (its LambdaLR) and the reversal coefficient
    2 / (1 + exp(-i / 1000)) - 1 (tllib/modules/grl.py), i the iteration."""
    for spec, gamma, piece in (("office31.py:dann", 0.001, "dann"), ("office31.py:mdd", 0.0002, "mdd"),
                               ("domainnet.py:cdan,task=c2r", 0.001, "cdan")):
        c = cfg(spec)
        lr = make_schedule(c)
        opts = c.loss_options[piece]
        for i in (0, 1, 777, c.total_steps // 2, c.total_steps - 1):
            assert math.isclose(float(lr(i)), c.optim.lr * (1 + gamma * i) ** -0.75, rel_tol=1e-5)
            high = opts.get("high", 1.0)
            want = high * (2 / (1 + math.exp(-i / 1000)) - 1)
            assert math.isclose(float(grl_coeff(i / c.total_steps, opts.alpha, high)), want, rel_tol=1e-4, abs_tol=1e-6)
    assert cfg("office31.py:mdd").loss_options.mdd.high == 0.1  # TLlib's MDD: hi=0.1


def test_every_recipe_resolves():
    for name in CONFIGS:
        for m in METHODS:
            c = cfg(f"{name}.py:{m}")
            assert c.loss.ce == 1.0 and c.adapt.target


# ---------------------------------------------------------------------------------- table sweeps
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_table_sweep_members_are_the_runs_themselves(name):
    """Every task x method x seed, and each member (the table's base config + its overrides) is the
    very config of that run alone."""
    members = load_sweep(str(ROOT / "configs" / f"{name}.py:table"))
    assert len(members) == CONFIGS[name] * len(METHODS) * 3
    tasks = {get(cfg(f"{name}.py:table"), "data.train")}
    checked = 0
    for m in members[:: max(len(members) // 20, 1)]:  # a spread of members (resolving all takes a while)
        member = cfg(f"{name}.py:table", *override_args(m))
        spec = _spec_of(name, member)
        alone = cfg(spec)
        assert member.to_dict() == alone.to_dict(), spec
        tasks.add(member.data.train)
        checked += 1
    assert checked >= 5 and len(tasks) > (name != "visda2017")


def _spec_of(name, c):
    """The ARG of the single run ``c`` is (from its data and loss; seed as run)."""
    method = next(m for m in METHODS if _loss_of(name, m) == dict(c.loss))
    src, tgt = c.data.train.split(":")[-1], c.adapt.target.split(":")[-1]
    letters = {"office31": None, "office_home": None, "domainnet": {"clipart": "c", "painting": "p", "real": "r",
                                                                    "sketch": "s"},
               "digits_tllib": {"mnist": "M", "usps": "U", "svhn": "S"}}.get(name)
    if name == "visda2017":
        return f"{name}.py:{method},seed={c.seed}"
    if letters:
        src, tgt = letters[src], letters[tgt]
    return f"{name}.py:{method},task={src}2{tgt},seed={c.seed}"


def _loss_of(name, method):
    task = {"visda2017": "", "digits_tllib": ",task=M2U"}.get(name, "")
    return dict(cfg(f"{name}.py:{method}{task}").loss)


def test_unknown_task_or_method_is_one_line():
    for arg, words in (("dann,task=A2X", ("unknown task", "A2W")), ("table,methods=dann:coral", ("coral",))):
        rc, _, err = run_jtl("sweep", "--config", ROOT / "configs" / f"office31.py:{arg}", "--workdir", "/nonexistent",
                             "--list")
        assert rc == 2 and "Traceback" not in err and all(w in err for w in words), err


# ---------------------------------------------------------------------------------- end to end on the fakes
@pytest.fixture
def fakes(tmp_path, monkeypatch):
    for d in ("office31", "mnist", "usps"):
        fake_benchmarks.make_layout(d, tmp_path / "data")
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def final(wd, label="target_test"):
    """The run's final metrics on ``label`` and its last logged loss."""
    summary = json.loads((wd / "summary.json").read_text())
    rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    return summary["final"][label], rows[-1]["train/loss"]


def test_office31_mdd_trains_with_tllib_heads(fakes):
    wd = fakes / "mdd"
    rc, out, err = run_jtl("train", "--config", ROOT / "configs/office31.py:mdd,task=A2W,steps=2", "--workdir", wd,
                           *TINY)
    assert rc == 0, err[-3000:]
    metrics, loss = final(wd)
    assert metrics["count"] == fake_benchmarks.expected("office31")["W"]["splits"]["test"]  # the whole target
    assert 0 <= metrics["top1"] <= 1 and np.isfinite(loss)
    recorded = json.loads((wd / "config.json").read_text())
    assert recorded["adapt"]["classifier"] == "mlp" and recorded["data"]["train"] == "office31:A"
    norm = json.loads((wd / "run.json").read_text())["normalization"]  # what jtl eval / predict read
    assert (norm["resize"], norm["eval_crop"]) == (256, "center")  # TLlib's transforms
    assert recorded["optim"]["inv_gamma"] == pytest.approx(0.0002 * 2)  # steps=2: TLlib's gamma per iteration


def test_office31_table_sweep_and_collect(fakes):
    sweep = fakes / "table"
    spec = ROOT / "configs/office31.py:table,methods=dann,tasks=D2W,seeds=0:1,steps=2"
    rc, out, err = run_jtl("sweep", "--config", spec, "--workdir", sweep, *TINY)
    assert rc == 0, (out + err)[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(runs) == 2
    assert {json.loads((r / "config.json").read_text())["seed"] for r in runs} == {0, 1}
    rc, out, err = run_jtl("collect", sweep, "--group-by", "loss,data.train,adapt.target", "--select", "none",
                           "--out", fakes / "office31.md")
    assert rc == 0, err[-3000:]
    table = (fakes / "office31.md").read_text()
    tops = [final(r)[0]["top1"] for r in runs]
    mean = f"{100 * np.mean(tops):.1f}"
    assert "office31:D" in table and "office31:W" in table and mean in table, (table, tops)


@pytest.mark.slow
def test_digits_table_sweep_mcd(fakes):
    """The second benchmark config, through ``jtl sweep``: MCD with TLlib's heads (three-update step)."""
    sweep = fakes / "digits"
    rc, out, err = run_jtl("sweep", "--config", ROOT / "configs/digits_tllib.py:mcd,task=U2M,seeds=0,steps=2",
                           "--workdir", sweep, "--config.model.name=cifar_resnet8", "--config.batch_size=8",
                           "--config.eval_batch_size=16", "--config.adapt.classifier_width=16")
    assert rc == 0, (out + err)[-3000:]
    (run,) = [p.parent for p in sweep.glob("*/summary.json")]
    metrics, loss = final(run)
    assert 0 <= metrics["top1"] <= 1 and np.isfinite(loss)
    assert json.loads((run / "config.json").read_text())["adapt"]["classifier"] == "mlp_bn"


@pytest.mark.slow
def test_digits_trains_and_evaluates(fakes):
    """``jtl train`` of the second config, then ``jtl eval`` of its run directory (TLlib heads restored)."""
    wd = fakes / "dann"
    rc, out, err = run_jtl("train", "--config", ROOT / "configs/digits_tllib.py:dann,task=M2U,steps=2", "--workdir",
                           wd, "--config.model.name=cifar_resnet8", "--config.batch_size=8",
                           "--config.eval_batch_size=16")
    assert rc == 0, err[-3000:]
    rc, out, err = run_jtl("eval", "--workdir", wd, "--split", "target_test")
    assert rc == 0, err[-3000:]
    assert "top1" in out, out
