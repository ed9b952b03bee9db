"""VGG/AlexNet, DenseNet-121 and MobileNetV3-Large ported from torchvision give torchvision's
outputs (reference: real torchvision in a subprocess, tests/torch_reference.py).

The reference randomises every BatchNorm's affine parameters and running statistics and
every convolution/linear bias, and sets dropout's p to 0 so that train mode is
deterministic on both sides (jtl: ``dropout=0.0``). The default suite runs the cheap
representatives at 64 px (AlexNet, whose adaptive pool then repeats a 1x1 map 6x6 times;
MobileNetV3-Large; DenseNet-121); 224 px and the VGGs are ``slow``.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import SYSTEM_PYTHON, rel_err, run_reference_script
from jtl.errors import WeightsError
from jtl.models import create_model
from jtl.models import densenet, mobilenet, vgg  # noqa: F401 - registers the families
from jtl.weights import port_state_dict, port_torchvision, read_state_dict, torch_key

slow = pytest.mark.slow
ALL = ["alexnet", "vgg11", "vgg16", "vgg16_bn", "densenet121", "mobilenet_v3_large"]
FAST = {"alexnet", "mobilenet_v3_large"}  # default suite: cheap representatives (make test's 25-minute budget)
BATCHNORM = ["mobilenet_v3_large", "densenet121", "vgg16_bn"]


def archs(names, fast=FAST):
    """``reference`` parameters (indirect): the architectures not in ``fast`` are slow."""
    return pytest.mark.parametrize("reference", [a if a in fast else pytest.param(a, marks=slow) for a in names],
                                   indirect=True)


SIZES = pytest.mark.parametrize("size", [64, pytest.param(224, marks=slow)])

# (tap, stride, channels) in depth order; for AlexNet (tap, map size, channels) per input size.
_VGG = [(f"layer{i + 1}", 2 ** (i + 1), c) for i, c in enumerate((64, 128, 256, 512, 512))]
TAPS = {
    "vgg11": _VGG, "vgg16": _VGG, "vgg16_bn": _VGG,
    "densenet121": [("stem", 4, 64), ("layer1", 4, 256), ("layer2", 8, 512), ("layer3", 16, 1024),
                    ("layer4", 32, 1024)],
    "mobilenet_v3_large": [("stem", 2, 16), ("layer1", 4, 24), ("layer2", 8, 40), ("layer3", 16, 112),
                           ("layer4", 32, 960)],
}
ALEXNET_TAPS = {64: [("layer1", 7, 64), ("layer2", 3, 192), ("layer3", 1, 256)],
                224: [("layer1", 27, 64), ("layer2", 13, 192), ("layer3", 6, 256)]}
POOLED = {"densenet121": 1024, "mobilenet_v3_large": 1280}  # others: 4096


_TORCH: dict = {}


def _torch_reference(arch, size, tmp_path_factory):
    """(.pth path, outputs at ``size`` px) of torchvision's ``arch``, once per session; the
    default suite's architectures at 64 px in one subprocess (one torch start-up). Every run
    draws the same weights (same seed), so one port serves all sizes."""
    if (arch, size) not in _TORCH:
        group = sorted(FAST) if arch in FAST and size == 64 else [arch]
        modes = "eval,train64" if size == 64 else "eval,train,train64" if arch in BATCHNORM else "eval"
        d = tmp_path_factory.mktemp(f"torch{size}")
        run_reference_script(SYSTEM_PYTHON, "torch_reference.py", "--arch", ",".join(group), "--sizes", size,
                             "--modes", modes, "--pth", d / "{arch}.pth", "--out", d / "{arch}.npz",
                             "--random-biases", 1, "--no-dropout", 1, "--count-params", 1, "--head", "auto")
        for a in group:
            _TORCH[a, size] = d / f"{a}.pth", dict(np.load(d / f"{a}.npz"))
    return _TORCH[arch, size]


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory, torchvision_python):
    """(arch, ported variables, size -> reference outputs, .pth path) for torchvision's ``arch``."""
    arch = request.param
    pth, _ = _torch_reference(arch, 64, tmp_path_factory)
    return arch, port_torchvision(pth, arch), lambda size: _torch_reference(arch, size, tmp_path_factory)[1], pth


# 64-px runs (the default suite's) compile without LLVM optimisation: 2x faster to compile,
# the same numbers (DenseNet-121's logits bit-identical); 224-px runs use XLA's defaults.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _apply(arch, variables, x, num_classes=1000, train=False, **options):
    """``(out, features)`` (train: ``((out, features), new batch_stats)``) of ``create_model(arch)``."""
    model = create_model(arch, num_classes, **options)
    fn = jax.jit(lambda v, x: model.apply(v, x, train=train, return_features=True,
                                          mutable=["batch_stats"] if train else False))
    return fn.lower(variables, x).compile(FAST_COMPILE if x.shape[1] < 224 else {})(variables, x)


def _flat_stats(batch_stats, arch):
    flat = traverse_util.flatten_dict(batch_stats)
    return {torch_key("batch_stats", k, arch): np.asarray(v) for k, v in flat.items()}


def _ref_stats(ref, prefix):
    return {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(prefix + "/")}


@archs(ALL)
@SIZES
def test_eval_logits_pooled_and_taps_match_torchvision(reference, size):
    arch, variables, refs, _ = reference
    ref = refs(size)
    logits, feats = _apply(arch, variables, ref[f"x{size}"])
    assert logits.shape == ref[f"eval{size}"].shape and logits.dtype == jnp.float32
    assert rel_err(logits, ref[f"eval{size}"]) <= 1e-4
    assert feats["pooled"].dtype == jnp.float32 and feats["pooled"].shape == (2, POOLED.get(arch, 4096))
    assert rel_err(feats["pooled"], ref[f"pooled{size}"]) <= 1e-4
    taps = ALEXNET_TAPS[size] if arch == "alexnet" else [(n, size // s, c) for n, s, c in TAPS[arch]]
    assert {k: v.shape for k, v in feats.items()} == {n: (2, h, h, c) for n, h, c in taps} | {
        "pooled": feats["pooled"].shape}


@archs(ALL)
def test_parameter_count_matches_torchvision(reference):
    arch, variables, refs, _ = reference
    ref = refs(64)
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == int(ref["n_params"])
    assert create_model(arch, None).num_features == POOLED.get(arch, 4096)


@archs(BATCHNORM, fast={"mobilenet_v3_large"})
@SIZES
def test_train_mode_and_running_stats_match_in_float64(reference, size):
    """Train mode (batch statistics, unbiased running variance, the family's momentum and
    eps) with dropout off on both sides, in float64 where the semantics are exact."""
    arch, variables, refs, _ = reference
    ref = refs(size)
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        options = {} if arch == "densenet121" else {"dropout": 0.0}
        x64 = jnp.asarray(ref[f"x{size}"], jnp.float64)
        (logits, _), new = _apply(arch, v64, x64, train=True, dtype=jnp.float64, **options)
        assert logits.dtype == jnp.float64
        assert rel_err(logits, ref[f"train64_{size}"]) <= 1e-9
        got, want = _flat_stats(new.get("batch_stats", {}), arch), _ref_stats(ref, f"stats64_{size}")
        assert got.keys() == want.keys() and want
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


@slow
@archs(BATCHNORM)
def test_train_mode_float32_matches(reference):
    """float32 train mode at 224 px (batch statistics of few elements amplify rounding)."""
    arch, variables, refs, _ = reference
    ref = refs(224)
    options = {} if arch == "densenet121" else {"dropout": 0.0}
    (logits, _), new = _apply(arch, variables, ref["x224"], train=True, **options)
    assert rel_err(logits, ref["train224"]) <= 1e-4
    got, want = _flat_stats(new["batch_stats"], arch), _ref_stats(ref, "stats224")
    assert got.keys() == want.keys()
    assert max(rel_err(got[k], want[k]) for k in want) <= 1e-4


@archs(ALL, fast={"alexnet"})
def test_frozen_modules_are_deterministic_in_train_mode(reference):
    """Everything frozen: train mode (default dropout) runs BatchNorm on running averages,
    drops nothing and moves no statistic, i.e. it is torchvision's eval mode."""
    arch, variables, refs, _ = reference
    ref = refs(64)
    frozen = tuple(variables["params"])
    (logits, _), new = _apply(arch, variables, ref["x64"], train=True, frozen=frozen)
    assert rel_err(logits, ref["eval64"]) <= 1e-4
    assert jax.tree.all(jax.tree.map(np.array_equal, new.get("batch_stats", {}), variables.get("batch_stats", {})))


@archs(ALL, fast={"alexnet"})
def test_mis_shaped_or_missing_key_is_refused_by_name(reference):
    arch, _, _, pth = reference
    sd, _ = read_state_dict(pth)
    conv = next(k for k in sd if k.endswith("weight") and np.ndim(sd[k]) == 4)
    bias = next(k for k in sd if k.endswith(".bias"))
    sd[conv] = np.asarray(sd[conv])[:, :, :1]
    del sd[bias]
    with pytest.raises(WeightsError, match=rf"missing: {bias}.*mis-shaped: {conv} "):
        port_state_dict(sd, arch)


@archs(["alexnet"])
def test_headless_backbone_and_bf16(reference):
    """Without ``classifier_6`` (``include_head=False`` drops only the last Linear) the
    backbone returns the classifier's input, fc7, in float32 and, as a smoke check, in
    bfloat16 (float32 outputs, bfloat16 maps)."""
    arch, variables, refs, _ = reference
    ref = refs(64)
    headless = {"params": {k: v for k, v in variables["params"].items() if k != "classifier_6"}}
    out, feats = _apply(arch, headless, ref["x64"], num_classes=None)
    assert out.shape == (2, 4096) and rel_err(out, ref["pooled64"]) <= 1e-4
    out16, feats16 = _apply(arch, headless, ref["x64"], num_classes=None, dtype=jnp.bfloat16)
    assert out16.dtype == feats16["pooled"].dtype == jnp.float32 and feats16["layer3"].dtype == jnp.bfloat16
    assert rel_err(out16, ref["pooled64"]) <= 0.05


@archs(["densenet121"])
def test_densenet_legacy_keys_are_renamed(reference):
    """torchvision's published densenet121 file names ``norm1`` ``norm.1`` (and so on)."""
    _, _, _, pth = reference
    sd, _ = read_state_dict(pth)
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert densenet.rename_legacy_keys(legacy).keys() == sd.keys()
