"""One parameter layout for every recipe, and runs written in the layout before it.

Before the transfer layout, a fine-tuning run's checkpoint held the ResNet as
``create_model(arch, K)`` lays it out (``conv1``, ``layer1_0``, ..., ``fc`` at the top)
and a linear probe's only ``kernel``/``bias`` (its frozen backbone, in the ResNet's own
layout, in backbone.npz). The tests write such runs by hand, with the checkpoint writer,
and check them against the ResNet module applied directly: they evaluate to the same
accuracy, seed new runs, and are refused (one line) when resumed.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import data as jdata
from jtl.models import create_model
from jtl.train.checkpoint import Checkpoints
from jtl.train.inference import RunModel
from jtl.train.loop import Trainer
from jtl.train.record import save_backbone
from jtl.train.state import TrainState
from test_adapt import da_config
from train_helpers import run_jtl, one_line_error, tiny_config


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 5-step fine-tuning run in the transfer layout."""
    wd = tmp_path_factory.mktemp("new") / "run"
    import os

    os.environ["JTL_DATA_DIR"] = str(tmp_path_factory.getbasetemp() / "data")
    Trainer(tiny_config(total_steps=5), wd).run()
    return wd


def _reference_top1(variables, arch, num_classes, norm, source, probe_head=None):
    """Accuracy of the ResNet module itself (the earlier layout's model) on ``source``."""
    images = np.stack([source[i]["image"] for i in range(len(source))])  # uint8, at the run's size already
    x = (images.astype(np.float32) / 255.0 - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    x = x.reshape(len(x), norm["image_size"], norm["image_size"], norm["channels"])
    if probe_head is None:
        logits = create_model(arch, num_classes).apply(variables, jnp.asarray(x), train=False)
    else:
        pooled = create_model(arch, None).apply(variables, jnp.asarray(x), train=False)
        logits = pooled @ probe_head["kernel"] + probe_head["bias"]
    return float(np.mean(np.argmax(np.asarray(logits), -1) == source.labels))


def _write_earlier_run(src_wd, dst_wd, params, batch_stats, *, recipe="train"):
    """``dst_wd``: ``src_wd``'s config and facts as the earlier jtl wrote them, with a checkpoint
    of ``params``/``batch_stats`` (no layout key in run.json; model.head and ^fc/ groups in config.json)."""
    dst_wd.mkdir(parents=True)
    cfg = json.loads((src_wd / "config.json").read_text())
    cfg["model"]["head"] = "fc"
    cfg["optim"]["groups"] = [["head", "^fc/", 1.0], ["backbone", "^(?!fc/)", 1.0]]
    if recipe == "linear_probe":
        cfg["recipe"], cfg["model"]["init"] = "linear_probe", "somewhere"
    (dst_wd / "config.json").write_text(json.dumps(cfg))
    facts = json.loads((src_wd / "run.json").read_text())
    del facts["layout"]
    facts["recipe"] = recipe
    if recipe == "linear_probe":
        facts["backbone"] = "backbone.npz"
    (dst_wd / "run.json").write_text(json.dumps(facts))
    state = TrainState(jnp.asarray(5, jnp.int32), params, batch_stats, (), jnp.zeros((2,), jnp.uint32))
    ckpts = Checkpoints(dst_wd / "checkpoints", async_save=False)
    ckpts.save(5, state, {"iterator": {}})
    ckpts.close()


def _val(wd):
    return jdata.load("digits", "val")  # the runs' data.eval split


def test_an_earlier_fine_tuning_run_evaluates_to_the_same_accuracy(trained, tmp_path):
    new = RunModel(trained)
    p, s = new.variables["params"], new.variables["batch_stats"]
    old_params = {**p["backbone"], "fc": p["head"]}  # the earlier layout, written out by hand
    old_stats = dict(s["backbone"])
    old = tmp_path / "old"
    _write_earlier_run(trained, old, old_params, old_stats)
    source = _val(old)
    reference = _reference_top1({"params": old_params, "batch_stats": old_stats}, "cifar_resnet8", 10,
                                new.normalization, source)
    got = RunModel(old).evaluate(source)["top1"]
    assert got == pytest.approx(reference, abs=1e-9)
    assert new.evaluate(source)["top1"] == pytest.approx(reference, abs=1e-9)
    assert 0.0 < reference < 1.0  # a real, non-degenerate comparison

    # It seeds a new run: the new run starts from exactly its backbone and classifier.
    seeded = Trainer(tiny_config(total_steps=1, **{"model.init": str(old)}), tmp_path / "seeded")
    start = jax.device_get(seeded.task.state.params)
    for name, tree in old_params.items():
        got_tree = start["head"] if name == "fc" else start["backbone"][name]
        for a, b in zip(jax.tree.leaves(got_tree), jax.tree.leaves(tree)):
            np.testing.assert_array_equal(a, b)

    # It is not resumed: one line, exit 2, nothing written.
    cfg_file = tmp_path / "same.py"
    cfg_file.write_text(f"import json\ndef get_config(arg=None):\n    c = json.load(open({str(trained / 'config.json')!r}))\n"
                        "    return c\n")
    before = sorted(x.name for x in old.rglob("*") if x.name != ".lock")  # the workdir lock file may stay
    result = run_jtl("train", "--config", str(cfg_file), "--workdir", str(old))
    one_line_error(result, "before jtl's transfer layout", "fresh --workdir")
    assert sorted(x.name for x in old.rglob("*") if x.name != ".lock") == before


def test_an_earlier_linear_probe_evaluates_to_the_same_accuracy(trained, tmp_path):
    new = RunModel(trained)
    p, s = new.variables["params"], new.variables["batch_stats"]
    rng = np.random.default_rng(0)
    head = {"kernel": rng.standard_normal(p["head"]["kernel"].shape).astype(np.float32),
            "bias": rng.standard_normal(p["head"]["bias"].shape).astype(np.float32)}
    old = tmp_path / "probe"
    _write_earlier_run(trained, old, head, {}, recipe="linear_probe")
    backbone = {"params": {**p["backbone"], "fc": p["head"]}, "batch_stats": dict(s["backbone"])}
    save_backbone(old, backbone)  # the earlier probe stored its whole starting classifier
    source = _val(old)
    reference = _reference_top1(backbone, "cifar_resnet8", 10, new.normalization, source, probe_head=head)
    assert RunModel(old).evaluate(source)["top1"] == pytest.approx(reference, abs=1e-9)


def test_an_adaptation_run_seeds_a_linear_probe(tmp_path):
    """The same layout everywhere: a probe on an adaptation run's backbone (it used to need the
    fine-tuning layout)."""
    adapted = tmp_path / "dann"
    Trainer(da_config("dann"), adapted).run()
    probe = tiny_config(recipe="linear_probe", total_steps=3, **{"model.init": str(adapted)})
    Trainer(probe, tmp_path / "probe").run()
    stored = RunModel(tmp_path / "probe").variables["params"]["backbone"]
    source = RunModel(adapted).variables["params"]["backbone"]
    assert jax.tree.structure(stored) == jax.tree.structure(source)
    for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(source)):
        np.testing.assert_array_equal(a, b)
    shutil.rmtree(adapted)  # the probe needs nothing of it any more
    assert 0.0 <= RunModel(tmp_path / "probe").evaluate(jdata.load("digits", "val"))["top1"] <= 1.0
