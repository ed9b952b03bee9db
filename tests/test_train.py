"""The trainer: partitions, data parallelism, resumption, NaN handling, outputs."""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jtl.errors import ConfigError, JtlError
from jtl.train.checkpoint import restore_variables
from jtl.train.loop import NonFiniteLoss, Trainer
from train_helpers import losses, tiny_config, train_in_subprocess


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def test_frozen_backbone_is_bitwise_unchanged(tmp_path):
    cfg = tiny_config(freeze=(r"^backbone/",), total_steps=5)
    trainer = Trainer(cfg, tmp_path)
    before_p, before_s = _flat(trainer.task.state.params), _flat(trainer.task.state.batch_stats)
    trainer.run()
    after_p, after_s = _flat(trainer.state.params), _flat(trainer.state.batch_stats)
    for k in before_p:
        if k.startswith("head/"):
            assert not np.array_equal(before_p[k], after_p[k]), k
        else:
            assert before_p[k].tobytes() == after_p[k].tobytes(), k
    for k in before_s:
        assert before_s[k].tobytes() == after_s[k].tobytes(), k
    # Optimizer state (SGD momentum) exists for the head only.
    opt_leaves = [x for x in jax.tree.leaves(trainer.state.opt_state) if np.ndim(x) > 0]
    head_sizes = sorted(v.size for k, v in after_p.items() if k.startswith("head/"))
    assert head_sizes, "the head is trained"
    assert sorted(np.size(x) for x in opt_leaves) == head_sizes


def test_one_vs_four_devices_same_losses(tmp_path):
    # A well-conditioned run (16 px, lr 0.01), compared over its first 8 steps. Sharded and unsharded
    # gradients differ only by float rounding (<= 1e-6 relative per tensor, measured), but training
    # amplifies rounding: at 8 px and lr 0.05 it grows 50x per step and reaches 1e-2 by step 20, and
    # even here one formulation of the 1x1 convolutions jumped from 1e-6 to 1e-4 at step 9. A real
    # sharding error (per-device BatchNorm statistics, a missing gradient all-reduce) shows at step 1-2.
    cfg = tiny_config(total_steps=8, batch_size=32, **{"data.image_size": 16, "optim.lr": 0.01})
    train_in_subprocess(cfg, tmp_path / "one", devices=1)
    train_in_subprocess(cfg, tmp_path / "four", devices=4)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "four")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5, atol=1e-6)
    info = json.loads((tmp_path / "four" / "run_info.json").read_text())
    assert len(info["devices"]) == 4


def test_sigkill_and_restart_equals_uninterrupted(tmp_path):
    cfg = tiny_config(total_steps=40, checkpoint_every=5, keep_checkpoints=2)
    train_in_subprocess(cfg, tmp_path / "straight")
    proc = train_in_subprocess(cfg, tmp_path / "killed", wait=False)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 17:
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [s for s in losses(tmp_path / "killed")]
    assert 17 <= max(done) < 40
    train_in_subprocess(cfg, tmp_path / "killed")
    a = restore_variables(tmp_path / "straight", which="latest")
    b = restore_variables(tmp_path / "killed", which="latest")
    assert a["step"] == b["step"] == 40
    fa, fb = _flat(a["params"]), _flat(b["params"])
    assert all(fa[k].tobytes() == fb[k].tobytes() for k in fa)
    sa, sb = _flat(a["batch_stats"]), _flat(b["batch_stats"])
    assert all(sa[k].tobytes() == sb[k].tobytes() for k in sa)
    # The restarted run's log has each step once.
    assert sorted(losses(tmp_path / "killed")) == list(range(1, 41))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from jtl.train import pieces

    @pieces.register("nan_after_half")
    def _nan(ctx):
        return jnp.where(ctx.progress >= 0.5, jnp.nan, 0.0)

    cfg = tiny_config(total_steps=20, checkpoint_every=4, log_every=5, loss=(("ce", 1.0), ("nan_after_half", 1.0)))
    trainer = Trainer(cfg, tmp_path)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 11 .*last good checkpoint: step 8"):
        trainer.run()
    from jtl.train.checkpoint import Checkpoints

    ck = Checkpoints(tmp_path / "checkpoints")
    assert ck.latest_step() == 8
    ck.close()
    v = restore_variables(tmp_path, which="latest")
    assert all(np.isfinite(x).all() for x in _flat(v["params"]).values())


def test_workdir_outputs(tmp_path):
    cfg = tiny_config(total_steps=6, eval_every=3, checkpoint_every=3, best_metric="val/top1")
    summary = Trainer(cfg, tmp_path).run()
    for name in ("config.json", "run_info.json", "metrics.jsonl", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tensorboard").iterdir())
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert set(info["versions"]) >= {"jax", "jaxlib", "flax", "optax", "orbax.checkpoint"}
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/top1" in r] == [3, 6]
    m = summary["final"]["val"]
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == m["count"]
    assert m["top1"] == pytest.approx(np.trace(cm) / cm.sum())
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 6


def test_workdir_of_another_config_refused(tmp_path):
    Trainer(tiny_config(total_steps=2), tmp_path).run()
    with pytest.raises(JtlError, match="holds a run of another config .*optim"):
        Trainer(tiny_config(total_steps=2, **{"optim.lr": 0.5}), tmp_path)


def test_batch_not_divisible_by_devices(tmp_path):
    script = (
        "from train_helpers import tiny_config\nfrom jtl.train import Trainer\n"
        "from jtl.errors import JtlError\n"
        "try:\n    Trainer(tiny_config(batch_size=30), '" + str(tmp_path) + "')\n"
        "except JtlError as e:\n    print(e)\n"
    )
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": os.path.dirname(__file__)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert "batch_size=30 is not divisible by the 4 devices" in r.stdout, r.stderr[-2000:]


def test_bfloat16_compute_keeps_float32_params(tmp_path):
    trainer = Trainer(tiny_config(total_steps=3, compute_dtype="bfloat16"), tmp_path)
    trainer.run()
    leaves = jax.tree.leaves(trainer.state.params)
    assert all(x.dtype == jnp.float32 for x in leaves)
    assert all(np.isfinite(v).all() for v in losses(tmp_path).values())
