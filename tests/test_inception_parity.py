"""Inception-v3 (jtl.models.inception) ported from torchvision gives torchvision's outputs
(reference: real torchvision in a subprocess, tests/torch_reference.py).

The reference draws torchvision's weights (``init_weights=False``: PyTorch's default
initialisation, 7 s faster than the truncated-normal one and as random), randomises every
BatchNorm's affine parameters and running statistics and every bias, and sets dropout's p
to 0 (jtl: ``dropout=0.0``), so train mode is deterministic on both sides.

The default suite runs at 75 px, the smallest input the network takes (``Mixed_7``'s maps
are then 1x1), one compilation: eval logits, pooled feature and taps; train mode with the
17x17 and 8x8 stages and ``fc`` frozen (torch: those sub-modules in eval mode; frozen, their
BatchNorms use running averages and keep their statistics, and the default dropout 0.5 is
off), the rest on batch statistics, with the running statistics; the auxiliary classifier
dropped on both sides in train mode (it needs a 17x17 ``Mixed_6e`` map, i.e. 299 px:
torchvision's own ``aux_logits=False`` surgery on the reference); the parameter count; a bad
key refused by name. Frozen, the small maps' BatchNorms (over 2-18 values per channel,
which amplifies float32 rounding to ~4e-3 in train mode) run on running averages: float32
suffices (measured 8e-7). ``slow``: 299 px eval, and train mode with the auxiliary logits
and all statistics in float64 and float32; the headless port; AuxLogits below 299 px.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import SYSTEM_PYTHON, rel_err, run_reference_script
from jtl.errors import ConfigError, WeightsError
from jtl.models import inception  # noqa: F401 - registers the family
from jtl.models.backbones import create_model
from jtl.weights.port import port_state_dict, port_torchvision, read_state_dict, torch_key

ARCH = "inception_v3"
NO_AUX = json.dumps({"aux_logits": False, "AuxLogits": None})
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # 2x faster to compile, the same numbers
# (tap, map side at 75 px, at 299 px, channels)
# Frozen in the default suite's train mode: the stages on 3x3 and 1x1 maps at 75 px.
FROZEN = ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
TAPS = [("stem", 7, 35, 192), ("layer1", 7, 35, 288), ("layer2", 3, 17, 768), ("layer3", 1, 8, 2048)]


def _reference(tmp_path_factory, size, modes, set_attrs="{}", eval_modules=()):
    d = tmp_path_factory.mktemp(f"inception{size}")
    run_reference_script(SYSTEM_PYTHON, "torch_reference.py", "--arch", ARCH, "--sizes", size, "--modes", modes,
                         "--pth", d / "w.pth", "--out", d / "ref.npz", "--random-biases", 1, "--no-dropout", 1,
                         "--count-params", 1, "--head", "auto", "--kwargs", '{"init_weights": false}',
                         "--set-attrs", set_attrs, "--eval-modules", ",".join(eval_modules))
    return d / "w.pth", dict(np.load(d / "ref.npz"))


@pytest.fixture(scope="module")
def small(torchvision_python, tmp_path_factory):
    """(pth, ported variables, reference, jtl's outputs) at 75 px. jtl's outputs (eval mode;
    train mode with ``FROZEN`` and ``fc`` frozen) compile from the variables' shapes, in one
    executable without LLVM optimisation, while torch computes the reference."""
    with ThreadPoolExecutor(1) as pool:
        reference = pool.submit(_reference, tmp_path_factory, 75, "eval,train", NO_AUX, FROZEN)
        shapes = jax.eval_shape(create_model(ARCH, 1000).init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
        model = create_model(ARCH, 1000)
        partly_frozen = create_model(ARCH, 1000, aux_logits=False, frozen=(*FROZEN, "fc"))  # dropout 0.5

        def outputs(v, x):
            return {"eval": model.apply(v, x, return_features=True),
                    "train": partly_frozen.apply(v, x, train=True, return_features=True, mutable=["batch_stats"],
                                                 rngs={"dropout": jax.random.key(0)})}

        run = jax.jit(outputs).lower(shapes, jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32)).compile(FAST_COMPILE)
        pth, ref = reference.result()
    variables = port_torchvision(pth, ARCH)
    return pth, variables, ref, run(variables, ref["x75"])


@pytest.fixture(scope="module")
def full(torchvision_python, tmp_path_factory):
    """The same at 299 px, with the auxiliary classifier in train mode."""
    pth, ref = _reference(tmp_path_factory, 299, "eval,train,train64")
    return pth, port_torchvision(pth, ARCH), ref


def _stats(batch_stats):
    flat = traverse_util.flatten_dict(batch_stats)
    return {torch_key("batch_stats", k, ARCH): np.asarray(v) for k, v in flat.items()}


def _ref_stats(ref, prefix):
    return {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(prefix + "/")}


def _check_eval(logits, feats, ref, size):
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert rel_err(logits, ref[f"eval{size}"]) <= 1e-4
    assert feats["pooled"].dtype == jnp.float32 and rel_err(feats["pooled"], ref[f"pooled{size}"]) <= 1e-4
    side = {75: 0, 299: 1}[size]
    assert {k: v.shape for k, v in feats.items()} == {n: (2, t[side], t[side], t[2]) for n, *t in TAPS} | {
        "pooled": (2, 2048)}


def test_eval_logits_pooled_and_taps_match_torchvision_at_75px(small):
    _, _, ref, out = small
    _check_eval(*out["eval"], ref, 75)


def test_train_mode_with_frozen_stages_and_running_stats_match_at_75px(small):
    """Batch statistics, the unbiased running variance, eps 1e-3, momentum 0.1 in the trained
    modules; running averages and unchanged statistics in the frozen ones (and in the unused
    AuxLogits); no dropout behind the frozen ``fc``."""
    _, variables, ref, out = small
    (logits, feats), new = out["train"]
    assert "aux_logits" not in feats and rel_err(logits, ref["train75"]) <= 1e-4
    got, want, old = _stats(new["batch_stats"]), _ref_stats(ref, "stats75"), _stats(variables["batch_stats"])
    assert set(got) - set(want) == {k for k in got if k.startswith("AuxLogits.")} != set()
    for k in got:
        if k.startswith((*FROZEN, "AuxLogits")):
            np.testing.assert_array_equal(got[k], old[k], err_msg=k)
            np.testing.assert_array_equal(want.get(k, old[k]), old[k], err_msg=k)
        else:
            assert not np.array_equal(got[k], old[k]) and rel_err(got[k], want[k]) <= 1e-4, k


def test_parameter_count(small):
    _, variables, ref, _ = small
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == int(ref["n_params"]) == 27161264
    assert create_model(ARCH, None).num_features == 2048


@pytest.mark.slow
def test_headless_port_drops_fc_and_aux_logits(small):
    pth, variables, _, _ = small
    headless = port_torchvision(pth, ARCH, include_head=False)
    assert set(variables["params"]) - set(headless["params"]) == {"fc", "AuxLogits"}
    assert set(variables["batch_stats"]) - set(headless["batch_stats"]) == {"AuxLogits"}


def test_mis_shaped_or_missing_key_is_refused_by_name(small):
    pth, _, _, _ = small
    sd, _ = read_state_dict(pth)
    conv, bias = "Mixed_6b.branch7x7_2.conv.weight", "AuxLogits.fc.bias"
    sd[conv] = np.asarray(sd[conv])[:, :, :, :5]  # a 1x5 kernel where torchvision has 1x7
    del sd[bias]
    with pytest.raises(WeightsError, match=rf"missing: {bias}.*mis-shaped: {conv} \(128, 128, 1, 5\)"):
        port_state_dict(sd, ARCH)


@pytest.mark.slow
def test_aux_classifier_is_made_at_any_size_and_runs_from_299px():
    """Abstractly (no compilation, but 2 traces): eval-mode init makes AuxLogits' variables
    at 75 px too; train mode below 299 px with the auxiliary classifier is refused with a
    message (the aux logits themselves: the 299 px tests)."""
    model = create_model(ARCH, 10)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
    assert variables["params"]["AuxLogits"]["fc"]["kernel"].shape == (768, 10)
    with pytest.raises(ConfigError, match="17x17 Mixed_6e map in train mode"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 298, 298, 3)), train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.key(0)}), variables)


@pytest.mark.slow
def test_eval_at_299px(full):
    _, variables, ref = full
    model = create_model(ARCH, 1000, dropout=0.0)
    logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, ref["x299"])
    _check_eval(logits, feats, ref, 299)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_train_mode_with_aux_logits_at_299px(full, dtype):
    """Train mode with the auxiliary classifier: logits, aux logits and every running
    statistic (AuxLogits' included). float32: the aux head's BatchNorm normalises 2 values
    per channel (its 1x1 map), which amplifies rounding (measured 1.1e-4)."""
    _, variables, ref = full
    tol, prefix = (1e-9, "64_") if dtype == "float64" else (1e-4, "")
    with jax.enable_x64(dtype == "float64"):
        v = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
        model = create_model(ARCH, 1000, dropout=0.0, dtype=jnp.dtype(dtype))
        fn = jax.jit(lambda v, x: model.apply(v, x, train=True, return_features=True, mutable=["batch_stats"]))
        (logits, feats), new = fn(v, jnp.asarray(ref["x299"], dtype))
        assert rel_err(logits, ref[f"train{prefix}299"]) <= tol
        assert rel_err(feats["aux_logits"], ref[f"aux{prefix}299"]) <= (tol if prefix else 1e-3)
        got, want = _stats(new["batch_stats"]), _ref_stats(ref, f"stats{prefix}299")
        assert got.keys() == want.keys() and any(k.startswith("AuxLogits.") for k in want)
        assert max(rel_err(got[k], want[k]) for k in want) <= tol
