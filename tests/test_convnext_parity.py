"""ConvNeXt (jtl.models.convnext) against the real timm 1.0.31, run in a subprocess (tests/timm_reference.py).

timm's models get random weights (LayerNorm affines, biases and LayerScale included);
jtl ports their state dict with the generic porter and must reproduce timm's eval logits
and pre-logits features at 224 px and at a smaller size, its train-mode logits and its
parameter count. The default suite uses a 5-block ConvNeXt (timm's ``convnext_tiny`` with
``depths=(1, 1, 2, 1)``, narrow; registered here as a test-only family); the real
architectures, ``convnext_atto`` (1x1-conv MLP) included, are ``slow``.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtl.models.convnext as cx
from conftest import rel_err, run_reference_script
from jtl.errors import WeightsError
from jtl.models.backbones import FAMILIES, create_model, register_family
from jtl.weights.port import port_state_dict

TEST_ARCH = "convnext_test_d5"
TEST_SPEC = {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128)}
# jtl arch -> (timm model, timm kwargs, batch, sizes)
CASES = {
    TEST_ARCH: ("convnext_tiny", TEST_SPEC, 2, (224, 64)),
    "convnext_atto": ("convnext_atto", {}, 2, (224, 100)),  # 100 px: maps of odd size, partial patches dropped
    **{a: (a, {}, 1, (224, 64)) for a in ("convnext_tiny", "convnext_small", "convnext_base")},
}
SLOW = [pytest.param(a, marks=pytest.mark.slow) for a in cx.ARCHS]
TOP = ("stem_0", "stem_1", "stages_0", "stages_1", "stages_2", "stages_3", "head_norm", "head_fc")


@pytest.fixture(scope="module")
def test_family():
    """The 5-block model as a separate family, removed again after this module."""
    archs = {TEST_ARCH: {**cx.ARCHS["convnext_tiny"], **TEST_SPEC}}
    register_family(dataclasses.replace(cx.FAMILY, name="convnext_test", archs=archs, torch_archs=(TEST_ARCH,),
                                        docs={}))
    yield
    FAMILIES.pop("convnext_test")


def _reference(python, tmp_path_factory, arch):
    model, kwargs, batch, sizes = CASES[arch]
    out = tmp_path_factory.mktemp(arch) / "ref.npz"
    run_reference_script(python, "timm_reference.py", "--model", model, "--kwargs", json.dumps(kwargs),
                         "--batch", batch, "--sizes", ",".join(map(str, sizes)), "--out", out)
    ref = dict(np.load(out))
    sd = {k[len("sd/"):]: v for k, v in ref.items() if k.startswith("sd/")}
    return arch, sd, port_state_dict(sd, arch), ref


@pytest.fixture(scope="module")
def default_ref(timm_python, tmp_path_factory, test_family):
    return _reference(timm_python, tmp_path_factory, TEST_ARCH)


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


@pytest.mark.parametrize("which", [0, 1], ids=["224px", "other_size"])
def test_eval_logits_and_pooled_features_match_timm(reference, which):
    arch, _, variables, ref = reference
    size = CASES[arch][3][which]
    logits, feats = _apply(arch, variables, ref[f"x{size}"], return_features=True)
    assert logits.shape == ref[f"eval{size}"].shape and feats["pooled"].dtype == jnp.float32
    assert rel_err(logits, ref[f"eval{size}"]) <= 1e-4
    assert rel_err(feats["pooled"], ref[f"features{size}"]) <= 1e-4
    dims = create_model(arch, None).dims
    assert [k for k in feats if k != "pooled"] == ["stage0", "stage1", "stage2", "stage3"]
    assert [feats[f"stage{i}"].shape[-1] for i in range(4)] == list(dims)
    assert feats["stage0"].shape[1] == size // 4


def test_train_mode_logits_match_timm(reference):
    """Train mode (timm's drop rates 0). jtl runs with drop_path_rate 0.5 but every module
    frozen, which must switch stochastic depth off: the network is timm's."""
    arch, _, variables, ref = reference
    size = CASES[arch][3][0]
    out = _apply(arch, variables, ref[f"x{size}"], options={"drop_path_rate": 0.5, "frozen": TOP}, train=True,
                 rngs={"dropout": jax.random.key(0)})
    assert rel_err(out, ref[f"train{size}"]) <= 1e-4


def test_parameter_count_matches_timm(reference):
    arch, _, variables, ref = reference
    assert sum(np.size(a) for a in jax.tree.leaves(variables["params"])) == int(ref["num_params"])
    assert set(variables) == {"params"}


@pytest.mark.slow  # make test is near its 25-minute budget: in make test-slow
def test_drop_path_follows_the_dropout_stream(default_ref):
    """Unfrozen, stochastic depth draws from "dropout": seeds differ, a seed repeats; the
    first block's rate is 0 (rates rise linearly from 0), so stage 0 is the eval one."""
    arch, _, variables, ref = default_ref
    x = ref["x64"]
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
    key = "stages.2.blocks.1.conv_dw.weight"
    with pytest.raises(WeightsError, match=r"missing: stages\.2\.blocks\.1\.conv_dw\.weight"):
        port_state_dict({k: v for k, v in sd.items() if k != key}, arch)
    with pytest.raises(WeightsError, match=r"unexpected: stages\.2\.blocks\.2\.gamma"):
        port_state_dict({**sd, "stages.2.blocks.2.gamma": sd["stages.2.blocks.1.gamma"]}, arch)
    with pytest.raises(WeightsError, match=r"mis-shaped: stages\.2\.blocks\.1\.conv_dw\.weight \(64, 1, 5, 5\)"):
        port_state_dict({**sd, key: sd[key][:, :, 1:-1, 1:-1]}, arch)
    fc1 = "stages.1.blocks.0.mlp.fc1.weight"  # a Linear's (out, in), not a 1x1 convolution's (out, in, 1, 1)
    with pytest.raises(WeightsError, match=r"mis-shaped: stages\.1\.blocks\.0\.mlp\.fc1\.weight \(128, 32, 1, 1\)"):
        port_state_dict({**sd, fc1: sd[fc1][..., None, None]}, arch)


def test_headless_port_keeps_the_head_norm(default_ref):
    """include_head=False drops ``head.fc`` only: ``head.norm`` belongs to the pooled feature."""
    arch, sd, variables, _ = default_ref
    headless = port_state_dict({k: v for k, v in sd.items() if not k.startswith("head.fc.")}, arch,
                               include_head=False)
    assert set(variables["params"]) - set(headless["params"]) == {"head_fc"}
    np.testing.assert_array_equal(headless["params"]["head_norm"]["scale"], sd["head.norm.weight"])
    assert create_model(arch, None).num_features == 128


@pytest.mark.slow  # make test is near its 25-minute budget: in make test-slow
def test_bfloat16_runs_close_to_float32(default_ref):
    arch, _, variables, ref = default_ref
    logits, feats = _apply(arch, variables, ref["x64"], options={"dtype": jnp.bfloat16}, return_features=True)
    assert logits.dtype == jnp.float32 and feats["pooled"].dtype == jnp.float32
    assert feats["stage3"].dtype == jnp.bfloat16
    assert rel_err(logits, ref["eval64"]) <= 5e-2
