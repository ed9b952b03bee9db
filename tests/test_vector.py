"""Vectorized sweeps: a member of a vmapped group equals the same configuration trained alone."""

import json

import numpy as np
import pytest

from jtl.train.loop import Trainer
from jtl.train.vector import NotVectorizable, VectorTrainer, plan_groups, swept_values, with_values
from test_adapt import da_config
from train_helpers import tiny_config


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def _losses(wd):
    return np.array([json.loads(x)["train/loss"] for x in (wd / "metrics.jsonl").read_text().splitlines()])


def _assert_members_equal_solo(cfgs, tmp_path, rtol=1e-5, late=None):
    """Each member's losses equal its run alone's within ``rtol``; ``late = (step, rtol)``
    allows ``rtol`` from that step on, for games that amplify float roundoff."""
    summaries = VectorTrainer(cfgs, [tmp_path / f"v{i}" for i in range(len(cfgs))]).run()
    for i, cfg in enumerate(cfgs):
        solo = Trainer(cfg, tmp_path / f"s{i}").run()
        lv, ls = _losses(tmp_path / f"v{i}"), _losses(tmp_path / f"s{i}")
        assert len(lv) == len(ls) == cfg.total_steps
        k = late[0] if late else len(lv)
        np.testing.assert_allclose(lv[:k], ls[:k], rtol=rtol, err_msg=f"member {i}")
        if late:
            np.testing.assert_allclose(lv[k:], ls[k:], rtol=late[1], err_msg=f"member {i}, from step {k + 1}")
        for label, m in solo["final"].items():
            assert abs(summaries[i]["final"][label]["top1"] - m["top1"]) <= 1 / 200, (i, label)
        # Each member wrote what a run alone writes.
        for name in ("config.json", "run_info.json", "metrics.jsonl", "summary.json"):
            assert (tmp_path / f"v{i}" / name).exists()
        assert json.loads((tmp_path / f"v{i}" / "config.json").read_text()) == json.loads(cfg.to_json_best_effort())


def test_dann_members_equal_runs_alone_over_50_steps(tmp_path):
    # The DANN weight, the learning rate and the seed differ between members.
    kw = {"total_steps": 50, "batch_size": 32, "checkpoint_every": 25, "eval_every": 25}
    cfgs = [da_config("dann", **kw, **{"loss": (("ce", 1.0), ("dann", w)), "optim.lr": lr, "seed": seed})
            for w, lr, seed in ((1.0, 0.004, 0), (0.3, 0.002, 0), (0.1, 0.004, 1))]
    assert plan_groups(cfgs) == [[0, 1, 2]]
    assert sorted(swept_values(cfgs)) == ["loss.dann", "optim.lr"]
    # A member's convolutions sum in another order than the run alone's (vmapped kernels):
    # 1e-6 apart at step 7, and DANN's adversarial game amplifies that to 5e-5 by step 32
    # (member 2, measured with the target adapted on all its images). The first 25 steps and
    # the final evaluations are held to the bounds of the other tests.
    _assert_members_equal_solo(cfgs, tmp_path, late=(25, 2e-4))


def test_classification_members_with_weight_decay_and_momentum(tmp_path):
    kw = {"total_steps": 50, "data.image_size": 16, "optim.schedule": "cosine", "checkpoint_every": 50}
    cfgs = [tiny_config(**kw, **o) for o in ({"optim.lr": 0.01, "optim.weight_decay": 1e-3, "seed": 1},
                                             {"optim.lr": 0.005, "optim.weight_decay": 1e-2, "optim.momentum": 0.8,
                                              "seed": 1})]
    assert sorted(swept_values(cfgs)) == ["optim.lr", "optim.momentum", "optim.weight_decay"]
    _assert_members_equal_solo(cfgs, tmp_path)


def test_grouping_keeps_structure_apart():
    a = tiny_config()
    assert len(plan_groups([a, tiny_config(seed=3), tiny_config(**{"optim.lr": 0.1})])) == 1
    assert len(plan_groups([a, tiny_config(batch_size=16)])) == 2  # shapes differ
    assert len(plan_groups([a, tiny_config(**{"optim.weight_decay": 1e-4})])) == 2  # a term switched on
    assert len(plan_groups([a, tiny_config(**{"model.name": "cifar_resnet14"})])) == 2
    with pytest.raises(NotVectorizable):
        VectorTrainer([a, tiny_config(batch_size=16)], ["/nonexistent/a", "/nonexistent/b"])


def test_with_values_sets_weights_and_nested_keys():
    cfg = da_config("cdan")
    c = with_values(cfg, {"loss.cdan": 0.25, "optim.lr": 0.5, "loss_options.cdan.alpha": 3.0})
    assert dict(c.loss) == {"ce": 1.0, "cdan": 0.25}
    assert c.optim.lr == 0.5 and c.loss_options.cdan.alpha == 3.0
    assert cfg.optim.lr == 0.01  # the original is untouched


def test_a_diverging_member_fails_alone(tmp_path):
    cfgs = [tiny_config(total_steps=6, **{"optim.lr": lr}) for lr in (0.01, 1e30)]
    summaries = VectorTrainer(cfgs, [tmp_path / "ok", tmp_path / "bad"]).run()
    assert summaries[0] is not None and summaries[1] is None
    failed = json.loads((tmp_path / "bad" / "failed.json").read_text())
    assert "loss became" in failed["error"] or "parameters became" in failed["error"]
    assert (tmp_path / "ok" / "summary.json").exists() and not (tmp_path / "bad" / "summary.json").exists()


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    kw = {"total_steps": 12, "checkpoint_every": 6}
    cfgs = [tiny_config(**kw, **{"optim.lr": lr, "seed": s}) for lr, s in ((0.02, 0), (0.01, 1))]
    VectorTrainer(cfgs, [tmp_path / "u0", tmp_path / "u1"]).run()
    half = [tiny_config(**{**kw, "total_steps": 6}, **{"optim.lr": lr, "seed": s}) for lr, s in ((0.02, 0), (0.01, 1))]
    VectorTrainer(half, [tmp_path / "r0", tmp_path / "r1"]).run()
    t = VectorTrainer(cfgs, [tmp_path / "r0", tmp_path / "r1"])
    t.run()
    for i in range(2):
        np.testing.assert_array_equal(_losses(tmp_path / f"u{i}"), _losses(tmp_path / f"r{i}"))


VECTOR_SCRIPT = r"""
import json, sys
from jtl.config import resolve
from jtl.train.vector import VectorTrainer
cfgs = [resolve(c) for c in json.loads(sys.argv[1])]
t = VectorTrainer(cfgs, json.loads(sys.argv[2]))
t.run()
print(json.dumps({"devices": len(t.mesh.devices.flat), "sharding": str(t.state.params["head"]["kernel"].sharding.spec)}))
"""


@pytest.mark.parametrize("k", [2, pytest.param(3, marks=pytest.mark.slow)])  # k=3 (replicated members): test-slow
def test_members_sharded_over_devices_equal_runs_alone(k, tmp_path):
    """Two forced host devices: K=2 members sharded one per device, K=3 replicated; both equal runs alone."""
    import os
    import subprocess
    import sys

    cfgs = [tiny_config(total_steps=20, **{"optim.lr": 0.01 * (i + 1), "seed": i % 2}) for i in range(k)]
    dirs = [str(tmp_path / f"v{i}") for i in range(k)]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = subprocess.run([sys.executable, "-c", VECTOR_SCRIPT, json.dumps([json.loads(c.to_json_best_effort()) for c in cfgs]),
                        json.dumps(dirs)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["devices"] == 2
    assert info["sharding"] == ("P('data',)" if k == 2 else "P()")
    for i, cfg in enumerate(cfgs):
        Trainer(cfg, tmp_path / f"s{i}").run()
        np.testing.assert_allclose(_losses(tmp_path / f"v{i}"), _losses(tmp_path / f"s{i}"), rtol=1e-5)
