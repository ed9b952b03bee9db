"""Model zoo: architecture facts, features, frozen BatchNorm, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.errors import ConfigError
from jtl.models import create_model

# Parameter counts of torchvision's models with the 1000-way head (torchvision's published metadata).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "wide_resnet50_2": 68_883_240,
}


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_match_torchvision(arch):
    shapes = jax.eval_shape(create_model(arch, 1000).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert _count(shapes["params"]) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch,params", [("cifar_resnet20", 0.27e6), ("cifar_resnet32", 0.46e6), ("cifar_resnet56", 0.85e6)])
def test_cifar_resnets_have_paper_size(arch, params):
    """He et al. (2016), Table 6: 0.27M / 0.46M / 0.85M (projection shortcuts add ~1%)."""
    shapes = jax.eval_shape(create_model(arch, 10).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert abs(_count(shapes["params"]) - params) / params < 0.03


def test_features_have_documented_shapes():
    model = create_model("resnet50", 10)
    x = jnp.zeros((2, 64, 64, 3))
    shapes = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), model.init(jax.random.key(0), x))
    logits, feats = shapes
    assert logits.shape == (2, 10)
    assert {k: v.shape for k, v in feats.items()} == {
        "stem": (2, 16, 16, 64),
        "layer1": (2, 16, 16, 256),
        "layer2": (2, 8, 8, 512),
        "layer3": (2, 4, 4, 1024),
        "layer4": (2, 2, 2, 2048),
        "pooled": (2, 2048),
    }


def test_small_resnet_on_grayscale_28px():
    model = create_model("cifar_resnet8", 5)
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    logits, feats = model.apply(variables, x, return_features=True)
    assert logits.shape == (4, 5) and feats["layer3"].shape == (4, 7, 7, 64)
    assert set(feats) == {"stem", "layer1", "layer2", "layer3", "pooled"}


def test_headless_model_returns_pooled_features():
    model = create_model("resnet18", None)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    assert "fc" not in variables["params"]
    out, feats = model.apply(variables, x, return_features=True)
    np.testing.assert_array_equal(out, feats["pooled"])
    np.testing.assert_allclose(out, feats["layer4"].mean(axis=(1, 2)), rtol=1e-6)


def test_frozen_bn_uses_running_averages_in_train_mode():
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) * 3 + 1
    variables = create_model("cifar_resnet8", 3).init(jax.random.key(0), x)
    frozen = create_model("cifar_resnet8", 3, frozen=("bn1", "layer1"))
    out, new = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
    old = variables["batch_stats"]
    for name in ("bn1", "layer1_0"):
        assert jax.tree.all(jax.tree.map(np.array_equal, new["batch_stats"][name], old[name]))
    assert not np.array_equal(new["batch_stats"]["layer2_0"]["bn1"]["mean"], old["layer2_0"]["bn1"]["mean"])
    # The frozen stem normalises with running statistics: its output equals eval mode's.
    _, f_eval = frozen.apply(variables, x, train=False, return_features=True)
    (_, f_train), _ = frozen.apply(variables, x, train=True, return_features=True, mutable=["batch_stats"])
    np.testing.assert_allclose(f_train["layer1"], f_eval["layer1"], rtol=1e-6, atol=1e-6)


def test_batchnorm_matches_numpy_formula():
    from jtl.models import BatchNorm

    x = np.random.default_rng(0).normal(2.0, 3.0, (5, 3, 4, 6)).astype(np.float32)
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x)
    v = {"params": {"scale": np.arange(1.0, 7.0, dtype=np.float32), "bias": np.full(6, 0.5, np.float32)},
         "batch_stats": v["batch_stats"]}
    y, new = bn.apply(v, x, mutable=["batch_stats"])
    mu, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5) * v["params"]["scale"] + 0.5, rtol=1e-5, atol=1e-5)
    n = 5 * 3 * 4
    np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"name": "resnet19", "num_classes": 10}, "unknown architecture 'resnet19'"),
        ({"name": "resnet18", "num_classes": -3}, "num_classes must be a positive integer"),
        ({"name": "resnet18", "num_classes": 10, "widht": 3}, r"unknown model option\(s\) \['widht'\]"),
    ],
)
def test_create_model_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        create_model(**kwargs)
