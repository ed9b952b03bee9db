"""Domain adaptation through the one trainer: every method runs; DANN aligns the domains."""

import json

import numpy as np
import pytest

from jtl.config import resolve
from jtl.methods import METHODS, OPTIONS
from jtl.train.loop import Trainer
from train_helpers import with_overrides


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def da_config(method, **kw):
    base = {
        "model": {"name": "cifar_resnet8", "num_classes": 10},
        "data": {"train": "digits", "eval": ("source_val=digits:val", "target_test=digits:invert:test"),
                 "image_size": 8, "channels": 1, "normalize": "dataset", "augment": ()},
        "adapt": {"target": "digits:invert", "bottleneck_dim": 32, "disc_hidden": 32, "mcd_generator_steps": 2},
        "loss": METHODS[method],
        "loss_options": OPTIONS.get(method, {}),
        "batch_size": 16, "eval_batch_size": 64, "total_steps": 3, "eval_every": 0, "checkpoint_every": 0,
        "log_every": 1, "progress": False,
        "optim": {"lr": 0.01, "schedule": "inv", "groups": (("backbone", r"^backbone/", 0.1), ("heads", r"^(?!backbone/)", 1.0))},
    }
    return resolve(with_overrides(base, kw))


def _rows(wd):
    return [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains(method, tmp_path):
    trainer = Trainer(da_config(method), tmp_path)
    before = {k: np.asarray(v).copy() for k, v in trainer.task.state.params["head"].items()}
    summary = trainer.run()
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        losses = {k: v for k, v in r.items() if "loss" in k}
        assert losses and all(np.isfinite(v) for v in losses.values()), r
    for name in METHODS[method]:
        assert any(k.endswith(f"loss/{name}") for k in rows[0]), (name, sorted(rows[0]))
    after = trainer.state.params["head"]
    assert any(not np.array_equal(before[k], np.asarray(after[k])) for k in before)
    assert set(summary["final"]) == {"source_val", "target_test"}


def test_mcd_runs_three_phases_with_their_own_optimizer_state(tmp_path):
    trainer = Trainer(da_config("mcd"), tmp_path)
    assert [p.name for p in trainer.task.phases] == ["A", "B", "C"]
    assert len(trainer.task.state.opt_state) == 3
    import jax

    # Phase B trains only the classifiers: its momentum exists for head and head2 alone.
    sizes_b = sum(np.size(x) for x in jax.tree.leaves(trainer.task.state.opt_state[1]) if np.ndim(x) > 0)
    heads = sum(np.size(x) for k in ("head", "head2") for x in jax.tree.leaves(trainer.task.state.params[k]))
    assert sizes_b == heads
    trainer.run()
    keys = _rows(tmp_path)[0].keys()
    assert {"train/A/loss/ce2", "train/B/loss/mcd", "train/C/loss/mcd"} <= set(keys)


def test_dann_drives_discriminator_accuracy_towards_half(tmp_path):
    """With the gradient reversed into the features (DANN) the discriminator ends closer to
    chance than the same discriminator trained on features that ignore it."""
    kw = {"total_steps": 120, "log_every": 20, "batch_size": 32, "optim.lr": 0.02}
    Trainer(da_config("dann", **kw), tmp_path / "dann").run()
    Trainer(da_config("dann", **kw, **{"loss_options.dann.high": 0.0}), tmp_path / "frozen").run()
    acc = lambda wd: _rows(wd)[-1]["train/dann/disc_accuracy"]
    a_dann, a_free = acc(tmp_path / "dann"), acc(tmp_path / "frozen")
    assert a_free > 0.9, a_free  # inverted digits are trivially told apart
    assert abs(a_dann - 0.5) < abs(a_free - 0.5) - 0.1, (a_dann, a_free)
