"""EfficientNet-B0 (jtl.models.efficientnet) ported from torchvision (``efficientnet_b0``)
and from timm (``timm_efficientnet_b0``) gives each library's outputs (references: real
torchvision and timm in subprocesses, tests/torch_reference.py and tests/timm_reference.py).

Both references randomise BatchNorm's affine parameters and running statistics and every
bias; dropout and stochastic depth are 0 there. The two architectures are one module with
two key layouts, so one executable serves both. The default suite compiles one, at 64 px:
eval logits, pooled feature and taps (both architectures); train mode with the residual
blocks, the head convolution and the classifier frozen and dropout and stochastic depth at
0.5 (off in frozen modules; torchvision: those sub-modules in eval mode), the stem and the
first block of each stage on batch statistics, with the running statistics (torchvision's
layout; timm's adds no state-dict entry that train mode reads). ``slow``: 224 px eval,
everything frozen = eval, train mode in float32 (both) and float64 (torchvision).
"""

import functools
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import SYSTEM_PYTHON, rel_err, run_reference_script
from jtl.errors import WeightsError
from jtl.models import efficientnet as E
from jtl.models.backbones import create_model, family_of
from jtl.weights.port import port_state_dict, read_state_dict, torch_key

ARCHS = ["efficientnet_b0", "timm_efficientnet_b0"]
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # 64 px: 2x faster to compile, the same numbers
# Frozen in the default suite's train mode: every residual block (stochastic depth would drop
# them), the head convolution and the classifier (its dropout).
FROZEN = tuple(f"features_{s}_{j}" for s, (*_, n) in enumerate(E.B0, start=1) for j in range(1, n)) + (
    "features_8", "classifier_1")
TORCH_FROZEN = [m.replace("_", ".") for m in FROZEN]  # torchvision's sub-modules: features.2.1, ...
# (tap, stride, channels)
TAPS = [("stem", 2, 32), ("layer1", 2, 16), ("layer2", 4, 24), ("layer3", 8, 40), ("layer4", 16, 80),
        ("layer5", 16, 112), ("layer6", 32, 192), ("layer7", 32, 320), ("head", 32, 1280)]


def _torchvision(tmp_path_factory, sizes, modes, eval_modules=()):
    d = tmp_path_factory.mktemp("efficientnet_tv")
    run_reference_script(SYSTEM_PYTHON, "torch_reference.py", "--arch", "efficientnet_b0", "--sizes", sizes,
                         "--modes", modes, "--pth", d / "w.pth", "--out", d / "ref.npz", "--random-biases", 1,
                         "--no-dropout", 1, "--count-params", 1, "--head", "auto",
                         "--kwargs", '{"stochastic_depth_prob": 0.0}', "--eval-modules", ",".join(eval_modules))
    ref = dict(np.load(d / "ref.npz"))
    ref["num_params"] = ref["n_params"]
    ref.update({f"features{s}": ref[f"pooled{s}"] for s in sizes.split(",")})  # timm_reference's names
    return read_state_dict(d / "w.pth")[0], ref


def _timm(python, tmp_path_factory, sizes):
    out = tmp_path_factory.mktemp("efficientnet_timm") / "ref.npz"
    run_reference_script(python, "timm_reference.py", "--model", "efficientnet_b0", "--sizes", sizes, "--out", out)
    ref = dict(np.load(out))
    return {k[len("sd/"):]: v for k, v in ref.items() if k.startswith("sd/")}, ref


def _references(timm_python, tmp_path_factory, size, tv_modes, kinds, eval_modules=()):
    """{arch: (state dict, ported variables, reference)}: the two reference subprocesses run
    while jtl's graphs ``kinds`` for ``size`` compile from the variables' shapes."""
    with ThreadPoolExecutor(2) as pool:
        tv = pool.submit(_torchvision, tmp_path_factory, str(size), tv_modes, eval_modules)
        tm = pool.submit(_timm, timm_python, tmp_path_factory, str(size))
        shapes = jax.eval_shape(create_model("efficientnet_b0", 1000).init, jax.random.key(0),
                                jnp.zeros((1, size, size, 3)))
        for kind in kinds:
            _compiled(kind, shapes, (2, size, size, 3))
        pairs = {"efficientnet_b0": tv.result(), "timm_efficientnet_b0": tm.result()}
    return {a: (sd, port_state_dict(sd, a), ref) for a, (sd, ref) in pairs.items()}


@pytest.fixture(scope="module")
def refs64(torchvision_python, timm_python, tmp_path_factory):
    return _references(timm_python, tmp_path_factory, 64, "eval,train", ["default"], TORCH_FROZEN)


@pytest.fixture(scope="module")
def refs224(torchvision_python, timm_python, tmp_path_factory):
    return _references(timm_python, tmp_path_factory, 224, "eval,train,train64", ["eval+frozen", "train"])


@pytest.fixture(params=ARCHS)
def small(request, refs64):
    return (request.param, *refs64[request.param])


def _stats(batch_stats, arch):
    flat = traverse_util.flatten_dict(batch_stats)
    return {torch_key("batch_stats", k, arch): np.asarray(v) for k, v in flat.items()}


def _ref_stats(ref, prefix):
    return {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(prefix + "/")}


_COMPILED: dict = {}


def _compiled(kind, shapes, x_shape, dtype="float32"):
    """The executable of graph ``kind`` for inputs ``x_shape``, compiled once from the
    variables' shapes: both architectures share it (the same module, the same variable tree).
    "default": eval mode, and train mode with ``FROZEN`` frozen and the drop rates at 0.5;
    "eval+frozen": eval mode, and train mode with everything frozen; "train": train mode."""
    key = (kind, x_shape, dtype)
    if key not in _COMPILED:
        model = create_model("efficientnet_b0", 1000, dropout=0.0, dtype=jnp.dtype(dtype))
        if kind == "default":
            partly = create_model("efficientnet_b0", 1000, dropout=0.5, drop_path_rate=0.5, frozen=FROZEN)

            def fn(v, x):
                train = partly.apply(v, x, train=True, return_features=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(0)})
                return model.apply(v, x, return_features=True), train
        elif kind == "eval+frozen":
            frozen = create_model("efficientnet_b0", 1000, dropout=0.5, drop_path_rate=0.5,
                                  frozen=tuple(shapes["params"]))

            def fn(v, x):
                (train_out, _), new = frozen.apply(v, x, train=True, return_features=True, mutable=["batch_stats"],
                                                   rngs={"dropout": jax.random.key(0)})
                return model.apply(v, x, return_features=True), train_out, new
        else:
            fn = lambda v, x: model.apply(v, x, train=True, return_features=True, mutable=["batch_stats"])
        shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), shapes)
        lowered = jax.jit(fn).lower(shapes, jax.ShapeDtypeStruct(x_shape, dtype))
        _COMPILED[key] = lowered.compile(FAST_COMPILE if x_shape[1] < 224 else {})
    return _COMPILED[key]


def _run(kind, variables, x, dtype="float32"):
    variables, x = jax.tree.map(lambda a: jnp.asarray(a, dtype), (variables, x))
    return _compiled(kind, variables, x.shape, dtype)(variables, x)


def _check_eval(arch, logits, feats, ref, size):
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert rel_err(logits, ref[f"eval{size}"]) <= 1e-4
    assert feats["pooled"].dtype == jnp.float32 and rel_err(feats["pooled"], ref[f"features{size}"]) <= 1e-4
    assert {k: v.shape for k, v in feats.items()} == {n: (2, size // s, size // s, c) for n, s, c in TAPS} | {
        "pooled": (2, 1280)}
    assert family_of(arch).taps(arch) == tuple(f"layer{i}" for i in range(1, 8))


def test_eval_logits_pooled_and_taps_match_at_64px(small):
    arch, _, variables, ref = small
    (logits, feats), _ = _run("default", variables, ref["x64"])
    _check_eval(arch, logits, feats, ref, 64)


def test_train_mode_with_frozen_blocks_and_running_stats_match_at_64px(refs64):
    """Batch statistics, the unbiased running variance, eps 1e-5, momentum 0.1 in the trained
    modules; running averages, unchanged statistics and no stochastic depth or dropout in
    the frozen ones (float32: measured 1e-5 with every module training)."""
    arch = "efficientnet_b0"
    _, variables, ref = refs64[arch]
    _, ((logits, _), new) = _run("default", variables, ref["x64"])
    assert rel_err(logits, ref["train64"]) <= 1e-4
    got, want = _stats(new["batch_stats"], arch), _ref_stats(ref, "stats64")
    old = _stats(variables["batch_stats"], arch)
    assert got.keys() == want.keys()
    for k in got:
        if k.startswith(tuple(m + "." for m in TORCH_FROZEN)):
            np.testing.assert_array_equal(got[k], old[k], err_msg=k)
            np.testing.assert_array_equal(want[k], old[k], err_msg=k)
        else:
            assert not np.array_equal(got[k], old[k]) and rel_err(got[k], want[k]) <= 1e-4, k


def test_parameter_count_and_one_module(small):
    arch, _, variables, ref = small
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == int(ref["num_params"]) == 5288548
    assert create_model(arch, None).num_features == 1280
    assert create_model(arch, 7) == create_model("efficientnet_b0", 7)  # one module, two key layouts


@pytest.mark.parametrize("arch", [pytest.param("efficientnet_b0", marks=pytest.mark.slow), "timm_efficientnet_b0"])
def test_mis_shaped_or_missing_key_is_refused_by_name(refs64, arch):
    """(torchvision's layout: ``slow``; the port is the same code, and each call traces the model.)"""
    sd, _, _ = refs64[arch]
    bias, conv = {"efficientnet_b0": ("features.3.1.block.2.fc1.bias", "features.6.0.block.1.0.weight"),
                  "timm_efficientnet_b0": ("blocks.2.1.se.conv_reduce.bias", "blocks.5.0.conv_dw.weight")}[arch]
    sd = dict(sd)
    sd[conv] = np.asarray(sd[conv])[:, :, :3]  # a 3x5 depthwise kernel where B0 has 5x5
    del sd[bias]
    with pytest.raises(WeightsError, match=rf"missing: {bias}.*mis-shaped: {conv} \(672, 1, 3, 5\)"):
        port_state_dict(sd, arch)


def test_stochastic_depth_drops_whole_residual_branches_per_sample():
    """``x + b(x) m / (1 - p)`` with one Bernoulli(1 - p) ``m`` per sample, from the "dropout"
    stream (Huang et al. 2016; torchvision's ``StochasticDepth(p, "row")``, timm's DropPath)."""
    rng = np.random.default_rng(0)  # numpy draws: compiling threefry for an init costs seconds here
    x = rng.standard_normal((16, 4, 4, 16)).astype(np.float32)
    shapes = jax.eval_shape(lambda x: E.MBConv(6, 3, 1, 16).init(jax.random.key(0), x, False), x)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32) * 0.3, shapes)

    @functools.partial(jax.jit, static_argnums=0)
    def run(p, seed):
        return E.MBConv(6, 3, 1, 16, drop_path=p).apply(variables, x, True, mutable=["batch_stats"],
                                                         rngs={"dropout": jax.random.key(seed)})[0]

    branch = run(0.0, 0) - x
    out = run(0.25, 0)
    kept = np.array([np.allclose(out[n], x[n] + branch[n] / 0.75, rtol=1e-5, atol=1e-5) for n in range(16)])
    dropped = np.array([np.array_equal(out[n], x[n]) for n in range(16)])
    assert (kept ^ dropped).all() and kept.any() and dropped.any()
    np.testing.assert_array_equal(out, run(0.25, 0))
    assert not np.array_equal(out, run(0.25, 1))


def test_layer_ids():
    arch = "timm_efficientnet_b0"
    family = family_of(arch)
    ids = {p: family.layer_id(arch, p) for p in ("features_0/conv/kernel", "features_1_0/se/fc1/bias",
                                                 "features_6_3/project/bn/scale", "features_8/bn/bias")}
    assert ids == {"features_0/conv/kernel": 0, "features_1_0/se/fc1/bias": 1, "features_6_3/project/bn/scale": 6,
                   "features_8/bn/bias": 8} and family.num_layers(arch) == 7


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_eval_frozen_and_train_mode_at_224px(refs224, arch):
    """Eval; train mode with every top-level module frozen and the drop rates at 0.5 (the eval
    network, no statistic moving); train mode with every module training."""
    _, variables, ref = refs224[arch]
    (logits, feats), frozen_logits, unmoved = _run("eval+frozen", variables, ref["x224"])
    _check_eval(arch, logits, feats, ref, 224)
    np.testing.assert_array_equal(frozen_logits, logits)
    assert jax.tree.all(jax.tree.map(np.array_equal, unmoved["batch_stats"], variables["batch_stats"]))
    (logits, _), new = _run("train", variables, ref["x224"])
    assert rel_err(logits, ref["train224"]) <= 1e-4
    got, want = _stats(new["batch_stats"], arch), _ref_stats(ref, "stats224")
    assert got.keys() == want.keys() and max(rel_err(got[k], want[k]) for k in want) <= 1e-4


@pytest.mark.slow
def test_train_mode_in_float64_at_224px(refs224):
    """torchvision's train mode in float64, where the semantics are exact."""
    arch = "efficientnet_b0"
    _, variables, ref = refs224[arch]
    with jax.enable_x64(True):
        (logits, _), new = _run("train", variables, ref["x224"], "float64")
        assert logits.dtype == jnp.float64 and rel_err(logits, ref["train64_224"]) <= 1e-9
        got, want = _stats(new["batch_stats"], arch), _ref_stats(ref, "stats64_224")
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)
