"""TLlib's heads as switches (``adapt.bottleneck``, ``adapt.classifier``, ``adapt.disc_norm``,
``adapt.forward``), each against an independent reference: parameter shapes and counts written
out from Transfer-Learning-Library's module definitions (``tllib/alignment/mcd.py``
``ImageClassifierHead``, ``tllib/alignment/mdd.py`` ``ImageClassifier``,
``tllib/modules/domain_discriminator.py``), numpy forwards of the heads, and BatchNorm
statistics computed in numpy per domain for the separate forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from jtl.config import resolve
from jtl.errors import ConfigError
from jtl.methods import METHODS
from jtl.models.transfer import TransferModel
from jtl.train.adapt import adaptation_forward, apply_head, build_model
from jtl.train.adapt_heads import classifier_head
from jtl.models.heads import MLPHead
from jtl.models.layers import BatchNorm
from jtl.train.checkpoint import restore_variables
from jtl.train.loop import Trainer
from train_helpers import with_overrides

D = 64  # cifar_resnet8's pooled feature width
C = 5
EPS = 1e-5


def cfg_of(method, **kw):
    base = {"model": {"name": "cifar_resnet8", "num_classes": C},
            "data": {"train": "digits", "eval": ("target_test=digits:invert:test",), "image_size": 8, "channels": 1,
                     "normalize": "dataset", "augment": ()},
            "adapt": {"target": "digits:invert", "disc_hidden": 32, "mcd_generator_steps": 2},
            "loss": METHODS[method], "batch_size": 16, "eval_batch_size": 64, "total_steps": 3, "eval_every": 0,
            "checkpoint_every": 0, "log_every": 1, "progress": False}
    return resolve(with_overrides(base, kw))


def shapes(cfg):
    model = build_model(cfg)
    v = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), method=TransferModel.init_all),
                       jax.random.key(0))
    flat = lambda t: {"/".join(k): tuple(a.shape) for k, a in traverse_util.flatten_dict(t).items()}
    return flat(v["params"]), flat(v.get("batch_stats", {}))


def head_variables(model, seed=0):
    """``model``'s variables outside the backbone, drawn as ``model.init`` draws them (flax derives each
    parameter's key from its path), without the cost of initialising the backbone."""
    def touch(m, f):
        out = jnp.sum(m.head(m.bottleneck(f) if m.bottleneck is not None else f))
        for name, _, width in m.heads:
            out = out + jnp.sum(m.apply_head(name, jnp.zeros((2, width))))
        return out

    return jax.tree.map(np.asarray, dict(model.init(jax.random.key(seed), jnp.ones((2, D)), method=touch)))


def under(tree, prefix):
    return {k[len(prefix):]: s for k, s in tree.items() if k.startswith(prefix)}


def count(tree):
    return sum(int(np.prod(s)) for s in tree.values())


def mlp_shapes(widths, norm):
    """Dense layers fc0, fc1, ..., out of widths [in, h1, ..., out], with BatchNorm scale/bias after each hidden."""
    out = {}
    names = [f"fc{i}" for i in range(len(widths) - 2)] + ["out"]
    for i, name in enumerate(names):
        out[f"{name}/kernel"], out[f"{name}/bias"] = (widths[i], widths[i + 1]), (widths[i + 1],)
        if norm and name != "out":
            out[f"bn{i}/scale"] = out[f"bn{i}/bias"] = (widths[i + 1],)
    return out


# ---------------------------------------------------------------------------------- shapes and counts
def test_mcd_tllib_heads_are_image_classifier_heads():
    p, bs = shapes(cfg_of("mcd", **{"adapt.bottleneck_dim": 0, "adapt.classifier": "mlp_bn"}))
    # ImageClassifierHead(in=D, C, bottleneck_dim=1024): Linear(D,1024) BN Linear(1024,1024) BN Linear(1024,C)
    tllib = D * 1024 + 1024 + 2 * 1024 + 1024 * 1024 + 1024 + 2 * 1024 + 1024 * C + C
    for name in ("head/", "head2/"):
        assert under(p, name) == mlp_shapes([D, 1024, 1024, C], norm=True)
        assert count(under(p, name)) == tllib
    assert not under(p, "bottleneck/")
    assert under(bs, "head/") == {f"bn{i}/{s}": (1024,) for i in (0, 1) for s in ("mean", "var")}
    assert not under(bs, "head2/")  # F2 is applied only in training: batch statistics, no running averages


def test_mdd_tllib_heads_shapes_and_initialisation():
    cfg = cfg_of("mdd", **{"adapt.bottleneck_dim": 1024, "adapt.bottleneck": "bn_relu_dropout",
                           "adapt.classifier": "mlp"})
    p, _ = shapes(cfg)
    # ImageClassifier: bottleneck Linear(D,1024) BN ReLU Dropout; head = adv_head = Linear(1024,1024) ReLU Dropout Linear(1024,C)
    assert under(p, "bottleneck/") == {"fc/kernel": (D, 1024), "fc/bias": (1024,), "bn/scale": (1024,),
                                       "bn/bias": (1024,)}
    for name in ("head/", "adv/"):
        assert under(p, name) == mlp_shapes([1024, 1024, C], norm=False)
        assert count(under(p, name)) == 1024 * 1024 + 1024 + 1024 * C + C
    v = head_variables(build_model(cfg))["params"]
    for name in ("head", "adv"):  # normal_(0, 0.01) weights, fill_(0) biases
        for layer in ("fc0", "out"):
            w = v[name][layer]["kernel"]
            assert abs(w.std() / 0.01 - 1) < (0.02 if w.size > 1e5 else 0.1) and abs(w.mean()) < 1e-3
            assert np.all(v[name][layer]["bias"] == 0)
    fc = v["bottleneck"]["fc"]  # normal_(0, 0.005), fill_(0.1)
    assert abs(fc["kernel"].std() / 0.005 - 1) < 0.02 and np.all(fc["bias"] == np.float32(0.1))


@pytest.mark.parametrize("norm", ["batchnorm", "dropout", "none"])
def test_discriminator_shapes(norm):
    p, bs = shapes(cfg_of("dann", **{"adapt.bottleneck_dim": 16, "adapt.disc_norm": norm}))
    # DomainDiscriminator(in=16, hidden=32, batch_norm): Linear BN? ReLU (Dropout?) x2, Linear(32, 1)
    assert under(p, "disc/") == mlp_shapes([16, 32, 32, 1], norm=norm == "batchnorm")
    assert count(under(p, "disc/")) == 16 * 32 + 32 + 32 * 32 + 32 + 32 + 1 + (4 * 32 if norm == "batchnorm" else 0)
    assert not under(bs, "disc/")


def test_default_switches_build_jtl_heads_unchanged():
    """The switches' defaults give the very variables the plain TransferModel draws."""
    every_head = {"ce": 1.0, "dann": 1.0, "mdd": 1.0, "mcd": 1.0}  # disc, adv and head2 at once
    model = build_model(cfg_of("mdd", **{"adapt.bottleneck_dim": 16, "loss": every_head}))
    assert [name for name, _, _ in model.heads] == ["adv", "disc", "head2"]
    plain = TransferModel("cifar_resnet8", C, 16, model.heads, 32)
    a, b = (head_variables(m, 3) for m in (model, plain))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_unknown_switch_value_is_one_line():
    with pytest.raises(ConfigError, match=r"^adapt.classifier must be one of linear, mlp, mlp_bn; got 'mlp3'$"):
        cfg_of("mcd", **{"adapt.classifier": "mlp3"})


# ---------------------------------------------------------------------------------- numpy forwards
def np_bn(h, scale, bias, mean=None, var=None):
    mean = h.mean(0) if mean is None else mean
    var = h.var(0) if var is None else var
    return (h - mean) / np.sqrt(var + EPS) * scale + bias


def relu(h):
    return np.maximum(h, 0)


def random_params(module, x, seed=1):
    v = module.init(jax.random.key(seed), x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: np.asarray(a) + rng.normal(0, 0.3, a.shape).astype(np.float32), dict(v))


def test_mcd_head_forward_matches_numpy():
    x = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    head = classifier_head("mlp_bn", 8, 3, jnp.float32, evaluated=True)
    v = random_params(head, x)
    v["batch_stats"] = jax.tree.map(np.abs, v["batch_stats"])  # valid variances
    p, s = v["params"], v["batch_stats"]

    def ref(mode):
        h = x
        for i in (0, 1):
            h = h @ p[f"fc{i}"]["kernel"] + p[f"fc{i}"]["bias"]
            stats = (s[f"bn{i}"]["mean"], s[f"bn{i}"]["var"]) if mode == "eval" else (None, None)
            h = relu(np_bn(h, p[f"bn{i}"]["scale"], p[f"bn{i}"]["bias"], *stats))
        return h @ p["out"]["kernel"] + p["out"]["bias"]

    np.testing.assert_allclose(head.apply(v, x), ref("eval"), rtol=1e-4, atol=1e-4)  # eval: running averages
    y, upd = head.apply(v, x, mutable=["batch_stats"])  # train mode, no dropout key: BN on the batch
    np.testing.assert_allclose(y, ref("train"), rtol=1e-4, atol=1e-4)
    h0 = x @ p["fc0"]["kernel"] + p["fc0"]["bias"]  # PyTorch's update: momentum 0.1, unbiased variance
    np.testing.assert_allclose(upd["batch_stats"]["bn0"]["mean"], 0.9 * s["bn0"]["mean"] + 0.1 * h0.mean(0), rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["bn0"]["var"], 0.9 * s["bn0"]["var"] + 0.1 * h0.var(0, ddof=1),
                               rtol=1e-4)
    second = classifier_head("mlp_bn", 8, 3, jnp.float32, evaluated=False)  # F2: always batch statistics
    np.testing.assert_allclose(second.apply({"params": p}, x), ref("train"), rtol=1e-4, atol=1e-4)


def dropout_outputs(module, v, x, seed):
    y, inter = module.apply(v, x, rngs={"dropout": jax.random.key(seed)}, capture_intermediates=True)
    drops = {k: np.asarray(val["__call__"][0]) for k, val in inter["intermediates"].items() if k.startswith("Dropout")}
    return np.asarray(y), [drops[k] for k in sorted(drops)]


def check_dropped(d, h):
    """``d`` is inverted dropout (p = 0.5) of ``h``: each entry 0 or 2h, about half dropped."""
    kept = np.isclose(d, 2 * h, rtol=1e-5, atol=1e-6)
    assert np.all(kept | (d == 0))
    assert 0.3 < np.mean(~kept[h != 0]) < 0.7


@pytest.mark.parametrize("style", ["mlp", "mlp_bn", "disc_dropout"])
def test_dropout_sits_where_tllib_puts_it(style):
    x = np.abs(np.random.default_rng(0).normal(size=(64, 16))).astype(np.float32) + 0.1
    head = (MLPHead((32, 32), 1, dropout=0.5) if style == "disc_dropout" else
            classifier_head(style, 32, 4, jnp.float32, evaluated=False))
    v = random_params(head, x)
    p = v["params"]
    y, drops = dropout_outputs(head, v, x, 7)
    lin = lambda h, name: h @ p[name]["kernel"] + p[name]["bias"]
    if style == "mlp_bn":  # Dropout Linear BN ReLU Dropout Linear BN ReLU Linear
        check_dropped(drops[0], x)
        h = relu(np_bn(lin(drops[0], "fc0"), p["bn0"]["scale"], p["bn0"]["bias"]))
        check_dropped(drops[1], h)
        h = relu(np_bn(lin(drops[1], "fc1"), p["bn1"]["scale"], p["bn1"]["bias"]))
    else:  # Linear ReLU Dropout (Linear ReLU Dropout) Linear
        h = x
        for i, d in enumerate(drops):
            check_dropped(d, relu(lin(h, f"fc{i}")))
            h = d
    np.testing.assert_allclose(y, lin(h, "out"), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.apply(v, x), lin(_no_dropout(style, p, x, lin), "out"),
                               rtol=1e-4, atol=1e-4)  # without a dropout key: no dropout


def _no_dropout(style, p, x, lin):
    h = x
    for i in range(len([k for k in p if k.startswith("fc")])):
        h = lin(h, f"fc{i}")
        if style == "mlp_bn":
            h = np_bn(h, p[f"bn{i}"]["scale"], p[f"bn{i}"]["bias"])
        h = relu(h)
    return h


def test_batchnorm_discriminator_matches_numpy():
    cfg = cfg_of("dann", **{"adapt.bottleneck_dim": 16, "adapt.disc_norm": "batchnorm"})
    model = build_model(cfg)
    v = head_variables(model)
    rng = np.random.default_rng(2)
    p = jax.tree.map(lambda a: a + rng.normal(0, 0.2, a.shape).astype(np.float32), v["params"])
    f = rng.normal(size=(10, 16)).astype(np.float32)
    d = p["disc"]
    h = f
    for i in (0, 1):  # Linear BN (batch statistics, biased variance) ReLU, twice; Linear(1)
        h = relu(np_bn(h @ d[f"fc{i}"]["kernel"] + d[f"fc{i}"]["bias"], d[f"bn{i}"]["scale"], d[f"bn{i}"]["bias"]))
    want = h @ d["out"]["kernel"] + d["out"]["bias"]
    np.testing.assert_allclose(apply_head(model, p, "disc", f, jax.random.key(1)), want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- separate forward passes
class TinyNet(nn.Module):
    """Dense -> BatchNorm -> pooled feature -> logits: the interface ``adaptation_forward`` drives."""

    @nn.compact
    def __call__(self, x, train=False, return_features=False):
        f = BatchNorm(use_running_average=not train, name="bn")(nn.Dense(4, name="fc")(x.reshape(len(x), -1)))
        logits = nn.Dense(3, name="out")(f)
        return (logits, {"pooled": f}) if return_features else logits


@pytest.mark.parametrize("mode", ["separate", "joint"])
def test_separate_forward_normalises_each_domain_alone(mode):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(6, 2, 2, 1)).astype(np.float32)
    xt = (2 + 3 * rng.normal(size=(7, 2, 2, 1))).astype(np.float32)  # another domain: other statistics
    model = TinyNet()
    v = jax.tree.map(np.asarray, dict(model.init(jax.random.key(0), xs)))
    v["batch_stats"]["bn"] = {"mean": rng.normal(size=4).astype(np.float32), "var": np.full(4, 2.0, np.float32)}
    fwd = adaptation_forward(model, None, (), True, separate=mode == "separate")
    out, stats = fwd(v, {"image_s": xs, "image_t": xt}, True, jax.random.key(1))
    fc, bn = v["params"]["fc"], v["params"]["bn"]
    hs, ht = (x.reshape(len(x), -1) @ fc["kernel"] + fc["bias"] for x in (xs, xt))
    m0, v0 = v["batch_stats"]["bn"]["mean"], v["batch_stats"]["bn"]["var"]

    def update(m, var, h):  # PyTorch's running averages: momentum 0.1, unbiased batch variance
        return 0.9 * m + 0.1 * h.mean(0), 0.9 * var + 0.1 * h.var(0, ddof=1)

    if mode == "separate":  # the source pass, then the target pass, each normalised by its own batch
        want = update(*update(m0, v0, hs), ht)
        f_s, f_t = np_bn(hs, bn["scale"], bn["bias"]), np_bn(ht, bn["scale"], bn["bias"])
    else:
        want = update(m0, v0, np.concatenate([hs, ht]))
        f = np_bn(np.concatenate([hs, ht]), bn["scale"], bn["bias"])
        f_s, f_t = f[:6], f[6:]
    np.testing.assert_allclose(stats["bn"]["mean"], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["bn"]["var"], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["f_s"], f_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["f_t"], f_t, rtol=1e-4, atol=1e-5)
    o = v["params"]["out"]
    np.testing.assert_allclose(out["logits_t"], f_t @ o["kernel"] + o["bias"], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("method,switches", [
    ("mcd", {"adapt.bottleneck_dim": 0, "adapt.classifier": "mlp_bn", "adapt.classifier_width": 32}),
    ("mdd", {"adapt.bottleneck_dim": 32, "adapt.bottleneck": "bn_relu_dropout", "adapt.classifier": "mlp",
             "adapt.classifier_width": 32, "loss.dann": 1.0, "adapt.disc_norm": "batchnorm",
             "adapt.forward": "separate"}),
])
def test_tllib_heads_train(method, switches, tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))
    trainer = Trainer(cfg_of(method, **{"data.classes": (0, 1, 2, 3, 4)}, **switches), tmp_path / "run")
    before = jax.tree.map(np.asarray, trainer.task.state.batch_stats["head" if method == "mcd" else "bottleneck"])
    summary = trainer.run()
    after = restore_variables(tmp_path / "run", which="latest")["batch_stats"]
    after = after["head" if method == "mcd" else "bottleneck"]
    assert all(np.isfinite(v) for k, v in summary.items() if "loss" in k)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after))
    assert moved and all(moved)  # train-mode BatchNorm of the TLlib head / bottleneck updated its averages
