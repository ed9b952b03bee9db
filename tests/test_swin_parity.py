"""Swin Transformer (jtl.models.swin) against the real timm 1.0.31, run in a subprocess
(tests/timm_reference.py).

timm's models get random weights (relative position bias tables included); jtl ports
their state dict with the generic porter and must reproduce timm's eval logits, train-mode
logits and pre-logits features, and its parameter count. The default suite uses a
6-block, 24-wide Swin (timm's ``swin_tiny_patch4_window7_224`` with ``depths=(1, 2, 1, 2)``,
registered here as a test-only family) at 224 px: shifted windows with their mask in
stage 1, none in stage 3 (a single 7x7 window). ``slow``: the same model at 448 px (timm
built with ``img_size=448``; stage 3 then shifts too) and the real Swin-T.

timm's Swin defaults to ``drop_path_rate=0.1``; the references use 0 (deterministic train mode).
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtl.models.swin as sw
from jtl.weights.port import port_state_dict
from conftest import rel_err, run_reference_script
from jtl.errors import ConfigError, WeightsError
from jtl.models.backbones import FAMILIES, create_model, register_family

TEST_ARCH = "swin_test_d6"
TEST_SPEC = {"embed_dim": 24, "depths": (1, 2, 1, 2), "num_heads": (1, 2, 4, 8)}
# jtl arch -> (timm model, timm kwargs, batch, sizes)
CASES = {
    TEST_ARCH: ("swin_tiny_patch4_window7_224", TEST_SPEC, 2, (224, 448)),
    "swin_tiny_patch4_window7_224": ("swin_tiny_patch4_window7_224", {}, 1, (224,)),
}
SLOW = [pytest.param(a, marks=pytest.mark.slow) for a in sw.ARCHS]
TOP = ("patch_embed", "layers_0", "layers_1", "layers_2", "layers_3", "norm", "head_fc")


@pytest.fixture(scope="module")
def test_family():
    """The 6-block model as a separate family, removed again after this module."""
    archs = {TEST_ARCH: {**sw.ARCHS["swin_tiny_patch4_window7_224"], **TEST_SPEC}}
    register_family(dataclasses.replace(sw.FAMILY, name="swin_test", archs=archs, torch_archs=(TEST_ARCH,), docs={}))
    yield
    FAMILIES.pop("swin_test")


def _reference(python, tmp_path_factory, arch, sizes=None):
    model, kwargs, batch, all_sizes = CASES[arch]
    out = tmp_path_factory.mktemp(arch) / "ref.npz"
    run_reference_script(python, "timm_reference.py", "--model", model,
                         "--kwargs", json.dumps({**kwargs, "drop_path_rate": 0.0}), "--batch", batch,
                         "--sizes", ",".join(map(str, sizes or all_sizes)), "--resize-model", "--out", out)
    ref = dict(np.load(out))
    sd = {k[len("sd/"):]: v for k, v in ref.items() if k.startswith("sd/")}
    return arch, sd, port_state_dict(sd, arch), ref


@pytest.fixture(scope="module")
def default_ref(timm_python, tmp_path_factory, test_family):
    return _reference(timm_python, tmp_path_factory, TEST_ARCH, sizes=(224,))


@pytest.fixture(scope="module", params=[TEST_ARCH, *SLOW])
def reference(request, timm_python, tmp_path_factory, test_family):
    if request.param == TEST_ARCH:
        return request.getfixturevalue("default_ref")
    return _reference(timm_python, tmp_path_factory, request.param)


# The default suite's model compiles without LLVM optimisation (about 4x faster to compile,
# logits within 2e-7 of the optimised build); the real architectures use XLA's defaults.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def _jitted(arch, num_classes, options):
    model = create_model(arch, num_classes, **dict(options))
    return jax.jit(model.apply, static_argnames=("train", "return_features"),
                   compiler_options=FAST_COMPILE if arch == TEST_ARCH else None)


def _apply(arch, variables, x, num_classes=1000, options=(), **kw):
    return _jitted(arch, num_classes, tuple(sorted(dict(options).items())))(variables, x, **kw)


def _check_eval(arch, variables, ref, size):
    logits, feats = _apply(arch, variables, ref[f"x{size}"], return_features=True)
    assert logits.shape == ref[f"eval{size}"].shape and feats["pooled"].dtype == jnp.float32
    assert rel_err(logits, ref[f"eval{size}"]) <= 1e-4
    assert rel_err(feats["pooled"], ref[f"features{size}"]) <= 1e-4
    model = create_model(arch, None)
    assert [k for k in feats if k != "pooled"] == ["stage0", "stage1", "stage2", "stage3"]
    assert [feats[f"stage{i}"].shape[1:] for i in range(4)] == [
        (size // 4 // 2 ** i, size // 4 // 2 ** i, model.embed_dim * 2 ** i) for i in range(4)]


def test_eval_logits_and_pooled_features_match_timm(reference):
    arch, _, variables, ref = reference
    _check_eval(arch, variables, ref, 224)


@pytest.mark.slow
def test_eval_at_448_matches_timm_built_at_448(timm_python, tmp_path_factory, test_family):
    """timm built with img_size=448 (same state dict): every stage, the last included, shifts."""
    arch, _, variables, ref = _reference(timm_python, tmp_path_factory, TEST_ARCH, sizes=(448,))
    _check_eval(arch, variables, ref, 448)


def test_train_mode_logits_match_timm(reference):
    """Train mode (drop rates 0 in timm). jtl runs with drop_path_rate 0.5 but every module
    frozen, which must switch stochastic depth off: the network is timm's."""
    arch, _, variables, ref = reference
    out = _apply(arch, variables, ref["x224"], options={"drop_path_rate": 0.5, "frozen": TOP}, train=True,
                 rngs={"dropout": jax.random.key(0)})
    assert rel_err(out, ref["train224"]) <= 1e-4


def test_parameter_count_matches_timm(reference):
    _, _, variables, ref = reference
    assert sum(np.size(a) for a in jax.tree.leaves(variables["params"])) == int(ref["num_params"])
    assert set(variables) == {"params"}


@pytest.mark.slow  # make test is near its 25-minute budget: in make test-slow
def test_drop_path_follows_the_dropout_stream(default_ref):
    """Unfrozen, stochastic depth draws from "dropout": seeds differ, a seed repeats; stage 0's
    single block has rate 0 (rates rise linearly from 0), so its output is the eval one."""
    arch, _, variables, ref = default_ref
    x = ref["x224"]
    run = lambda seed: _apply(arch, variables, x, options={"drop_path_rate": 0.5}, train=True, return_features=True,
                              rngs={"dropout": jax.random.key(seed)})
    (a, fa), (b, _), (a2, _) = run(0), run(1), run(0)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, a2)
    _, eval_feats = _apply(arch, variables, x, return_features=True)
    np.testing.assert_allclose(fa["stage0"], eval_feats["stage0"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(fa["stage3"], eval_feats["stage3"])


def test_port_refuses_missing_unexpected_and_misshaped_keys(default_ref):
    arch, sd, _, _ = default_ref
    table = "layers.1.blocks.1.attn.relative_position_bias_table"
    with pytest.raises(WeightsError, match=rf"missing: {table}"):
        port_state_dict({k: v for k, v in sd.items() if k != table}, arch)
    with pytest.raises(WeightsError, match=r"unexpected: layers\.2\.blocks\.1\.norm1\.weight"):
        port_state_dict({**sd, "layers.2.blocks.1.norm1.weight": sd["layers.2.blocks.0.norm1.weight"]}, arch)
    with pytest.raises(WeightsError, match=rf"mis-shaped: {table} \(121, 2\)"):
        port_state_dict({**sd, table: sd[table][:121]}, arch)  # a 6x6 window's table
    merge = "layers.1.downsample.reduction.weight"  # (2C, 4C) = (48, 96)
    with pytest.raises(WeightsError, match=r"mis-shaped: layers\.1\.downsample\.reduction\.weight \(48, 48\)"):
        port_state_dict({**sd, merge: sd[merge][:, :48]}, arch)


def test_headless_port(default_ref):
    arch, sd, variables, _ = default_ref
    headless = port_state_dict({k: v for k, v in sd.items() if not k.startswith("head.fc.")}, arch,
                               include_head=False)
    assert set(variables["params"]) - set(headless["params"]) == {"head_fc"}
    assert create_model(arch, None).num_features == 192


@pytest.mark.slow  # make test is near its 25-minute budget: in make test-slow
def test_bfloat16_runs_close_to_float32(default_ref):
    arch, _, variables, ref = default_ref
    logits, feats = _apply(arch, variables, ref["x224"], options={"dtype": jnp.bfloat16}, return_features=True)
    assert logits.dtype == jnp.float32 and feats["pooled"].dtype == jnp.float32
    assert feats["stage3"].dtype == jnp.bfloat16
    assert rel_err(logits, ref["eval224"]) <= 5e-2


def test_sizes_that_are_not_whole_windows_are_refused(test_family):
    for size in (64, 256, 232):
        with pytest.raises(ConfigError, match=f"multiples of 224 .*got {size}x{size}"):
            create_model(TEST_ARCH, 5).init(jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_port_drops_the_window_buffers_of_older_timm_checkpoints(default_ref):
    arch, sd, variables, _ = default_ref
    stale = {"layers.0.blocks.0.attn.relative_position_index": sw.relative_position_index(7).astype(np.int64),
             "layers.1.blocks.1.attn_mask": sw.shifted_window_mask(28, 28, 7, (3, 3))}
    ported = port_state_dict({**sd, **stale}, arch)
    jax.tree.map(np.testing.assert_array_equal, ported, variables)
