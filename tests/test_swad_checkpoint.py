"""SWAD's averaged model as a checkpoint (``WORKDIR/swad_checkpoint/<step>/``, :mod:`jtl.dg.swad`):
its parameters are the numpy mean of the iterates the run checkpointed at every step of the
selected window, and ``jtl eval --checkpoint swad`` on each eval split reproduces the metrics the
run recorded for the averaged model (``summary["swad"]["final"]``)."""

import json

import numpy as np
import orbax.checkpoint as ocp
import pytest

from train_helpers import one_line_error, run_jtl

ARG = "swad,test=5,steps=6,eval_every=2,per_domain=4,size=8,test_limit=100,base=digits"


@pytest.fixture(scope="module")
def swad_run(tmp_path_factory):
    """A 6-step SWAD run on rotated digits that checkpoints every step (keeps all six)."""
    wd = tmp_path_factory.mktemp("swad") / "run"
    rc, _, err = run_jtl("train", "--config", f"configs/dg_rotated_fmnist.py:{ARG}", "--workdir", wd,
                         "--config.checkpoint_every=1", "--config.keep_checkpoints=6", "--config.dg.swad_bn_batches=4",
                         "--config.progress=False")
    assert rc == 0, err[-3000:]
    return wd, json.loads((wd / "summary.json").read_text())["swad"]


def _stored_params(path):
    """The ``params`` of an orbax item directory, read with orbax alone, as float64 numpy arrays."""
    tree = ocp.StandardCheckpointer().restore(path)
    import jax

    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree["params"])


def test_saved_swad_parameters_are_the_mean_of_the_window_iterates(swad_run):
    import jax

    from jtl.train.checkpoint import restore_variables

    wd, swad = swad_run
    first, last = swad["window_steps"]
    assert swad["checkpoint"] == f"swad_checkpoint/{last}" and (wd / swad["checkpoint"]).is_dir()
    iterates = [_stored_params(wd / "checkpoints" / str(s) / "state") for s in range(first, last + 1)]
    want = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *iterates)
    saved = restore_variables(wd, "swad")
    assert saved["step"] == last
    assert jax.tree.structure(saved["params"]) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    # the BatchNorm statistics are recomputed for the averaged weights, not the last iterate's
    latest = restore_variables(wd, "latest")["batch_stats"]
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(saved["batch_stats"]), jax.tree.leaves(latest)))


def test_jtl_eval_of_the_swad_checkpoint_reproduces_the_summary(swad_run):
    wd, swad = swad_run
    last = swad["window_steps"][1]
    assert set(swad["final"]) == {"val_0", "val_15", "val_30", "val_45", "val_60", "val_75", "test_75"}
    for label, recorded in swad["final"].items():
        rc, out, err = run_jtl("eval", "--workdir", wd, "--split", label, "--checkpoint", "swad")
        assert rc == 0, err[-3000:]
        printed = json.loads(out.strip().splitlines()[-1])
        assert printed["checkpoint"] == "swad" and printed["step"] == last
        written = json.loads((wd / f"eval_{label}_swad_step{last}.json").read_text())
        assert {k: written[k] for k in recorded} == recorded, label
    # the last iterate's result goes to its own file, next to the averaged model's
    rc, out, err = run_jtl("eval", "--workdir", wd, "--split", "test_75", "--checkpoint", "latest")
    assert rc == 0, err[-3000:]
    assert json.loads((wd / "eval_test_75_step6.json").read_text())["checkpoint"] == "latest"
    assert json.loads((wd / f"eval_test_75_swad_step{last}.json").read_text())["checkpoint"] == "swad"


def test_a_run_without_swad_checkpoint_is_a_one_line_error(swad_run, tmp_path):
    import shutil

    wd, _ = swad_run
    other = tmp_path / "no_swad"
    shutil.copytree(wd, other, ignore=shutil.ignore_patterns("swad_checkpoint"))
    one_line_error(run_jtl("eval", "--workdir", other, "--split", "test_75", "--checkpoint", "swad"),
                   "swad_checkpoint", "dg.swad")
    one_line_error(run_jtl("eval", "--workdir", other, "--split", "test_7", "--checkpoint", "latest"),
                   "test_75", "NAME:SPLIT")
