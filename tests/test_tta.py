"""Test-time adaptation (jtl.losses.test_time, jtl.tta, ``jtl eval --adapt``).

References are independent of the code under test: each loss against a float64 numpy
implementation of its paper's formula and central finite differences of that numpy function
(selections and weights the loss detaches are frozen at the base point); the online updates of
TENT, EATA and SAR against a numpy forward of a tiny BatchNorm network whose affine-parameter
gradients are finite differences of the numpy losses, with SGD-with-momentum written out.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import jtl.losses as L
from jtl.losses.test_time import default_margin
from jtl.models.layers import BatchNorm
from jtl.tta.adapter import Adapter, estimate_fisher
from jtl.tta.params import adapt_labels, adapt_mask, make_tta_optimizer
from jtl.tta.steps import Options
from loss_helpers import J, check_grad, jgrad, np_softmax, rand, x64  # noqa: F401 (x64: autouse fixture)
from train_helpers import one_line_error, run_jtl, tiny_config

C = 3
EPS = 1e-5


def np_entropy_rows(z):
    p = np_softmax(z)
    return np.array([-sum(pc * math.log(pc) for pc in row if pc > 0) for row in p])


# ---------------------------------------------------------------- losses against numpy


def np_eata_parts(z, m, e0, d):
    p, h = np_softmax(z), np_entropy_rows(z)
    nm = np.linalg.norm(m)
    cos = np.array([row @ m / (np.linalg.norm(row) * nm) if nm > 0 else 0.0 for row in p])
    mask = np.array([hi < e0 and abs(c) < d for hi, c in zip(h, cos)])
    return mask, np.where(mask, np.exp(e0 - h), 0.0)


def np_eata_entropy(z, m, e0, d, frozen=None):
    mask, w = frozen if frozen is not None else np_eata_parts(z, m, e0, d)
    h = np_entropy_rows(z)
    return sum(wi * hi for wi, hi, k in zip(w, h, mask) if k) / max(1, mask.sum())


def test_eata_entropy_and_selection_against_numpy():
    z = rand(8, C, seed=1, scale=2.0)
    h = np_entropy_rows(z)
    e0 = float(np.median(h))
    for m in (np.zeros(C), np_softmax(rand(1, C, seed=2))[0]):
        p = np_softmax(z)
        cos = p @ m / (np.linalg.norm(p, axis=1) * max(np.linalg.norm(m), 1e-300))
        d = float(np.sort(np.abs(cos))[5] + 1e-9) if m.any() else 0.4
        mask, w = J.eata_selection(z, m, e_margin=e0, d_margin=d)
        ref_mask, ref_w = np_eata_parts(z, m, e0, d)
        np.testing.assert_array_equal(np.asarray(mask), ref_mask)
        np.testing.assert_allclose(np.asarray(w), ref_w, rtol=1e-12)
        assert 0 < ref_mask.sum() < len(z)
        value = J.eata_entropy(z, m, e_margin=e0, d_margin=d)
        np.testing.assert_allclose(float(value), np_eata_entropy(z, m, e0, d), rtol=1e-12)
        frozen = np_eata_parts(z, m, e0, d)
        check_grad(lambda a: L.eata_entropy(a, jnp.asarray(m), e_margin=e0, d_margin=d),
                   lambda a: np_eata_entropy(a, m, e0, d, frozen), z)
    # nothing selected: 0, and no gradient
    assert float(J.eata_entropy(z, np.zeros(C), e_margin=0.0, d_margin=0.4)) == 0.0
    g = jgrad(lambda a: L.eata_entropy(a, jnp.zeros(C), e_margin=0.0, d_margin=0.4))(jnp.asarray(z))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def np_reliable_entropy(z, e0, where=None, frozen=None):
    h = np_entropy_rows(z)
    mask = frozen if frozen is not None else (h < e0) & (where if where is not None else True)
    return sum(hi for hi, k in zip(h, mask) if k) / max(1, mask.sum())


def test_reliable_entropy_against_numpy():
    z = rand(10, C, seed=3, scale=2.0)
    h = np_entropy_rows(z)
    e0 = 0.4 * math.log(C)
    assert 0 < (h < e0).sum() < len(z)
    where = np.arange(10) % 2 == 0
    for wh in (None, where):
        value = L.reliable_entropy(jnp.asarray(z), e_margin=e0, where=None if wh is None else jnp.asarray(wh))
        np.testing.assert_allclose(float(value), np_reliable_entropy(z, e0, wh), rtol=1e-12)
        frozen = (h < e0) & (wh if wh is not None else True)
        check_grad(lambda a: L.reliable_entropy(a, e_margin=e0, where=None if wh is None else jnp.asarray(wh)),
                   lambda a: np_reliable_entropy(a, e0, frozen=frozen), z)
    np.testing.assert_array_equal(np.asarray(L.reliable_mask(jnp.asarray(z), e_margin=e0)), h < e0)
    assert default_margin(1000) == pytest.approx(0.4 * math.log(1000))


def test_fisher_penalty_against_numpy():
    params = {"a": rand(3, 2, seed=4), "b": {"c": rand(5, seed=5)}}
    anchor = {"a": rand(3, 2, seed=6), "b": {"c": rand(5, seed=7)}}
    fisher = {"a": np.abs(rand(3, 2, seed=8)), "b": {"c": np.abs(rand(5, seed=9))}}

    def np_pen(a, c):
        return float(np.sum(fisher["a"] * (a - anchor["a"]) ** 2)
                     + np.sum(fisher["b"]["c"] * (c - anchor["b"]["c"]) ** 2))

    np.testing.assert_allclose(float(L.fisher_penalty(params, anchor, fisher)), np_pen(params["a"], params["b"]["c"]),
                               rtol=1e-12)
    check_grad(lambda a: L.fisher_penalty({"a": a, "b": params["b"]}, anchor, fisher),
               lambda a: np_pen(a, params["b"]["c"]), params["a"])


# ---------------------------------------------------------------- a tiny BatchNorm network, in flax and numpy


class TinyNet(nn.Module):
    """Dense(6) -> BatchNorm -> ReLU -> Dense(3): the BatchNorm's scale/bias are what adapts."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(6, name="fc1", param_dtype=jnp.float64)(x)
        x = BatchNorm(use_running_average=not train, name="bn", dtype=jnp.float64, param_dtype=jnp.float64)(x)
        return nn.Dense(C, name="fc2", param_dtype=jnp.float64)(nn.relu(x))


def tiny_variables(seed=0):
    v = TinyNet().init(jax.random.key(seed), jnp.zeros((2, 4)))
    v = jax.tree.map(lambda a: np.asarray(a, np.float64), v)
    r = np.random.default_rng(seed)
    v["params"]["fc1"]["kernel"] = 1.5 * r.standard_normal((4, 6))
    v["params"]["fc2"]["kernel"] = 2.0 * r.standard_normal((6, C))
    v["params"]["bn"]["scale"] = 1 + 0.3 * r.standard_normal(6)
    v["params"]["bn"]["bias"] = 0.3 * r.standard_normal(6)
    v["batch_stats"]["bn"]["mean"] = 0.2 * r.standard_normal(6)
    v["batch_stats"]["bn"]["var"] = 1 + 0.5 * r.random(6)
    return v


def np_logits(v, theta, x, batch_stats=True):
    """Numpy forward; ``theta`` = [scale (6), bias (6)] of the BatchNorm."""
    p = v["params"]
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    if batch_stats:
        mu, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)
    else:
        mu, var = v["batch_stats"]["bn"]["mean"], v["batch_stats"]["bn"]["var"]
    a = np.maximum((h - mu) / np.sqrt(var + EPS) * theta[:6] + theta[6:], 0)
    return a @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def fd_grad(f, theta, h=1e-6):
    g = np.zeros_like(theta)
    for k in range(theta.size):
        e = np.zeros_like(theta)
        e[k] = h
        g[k] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


def theta_of(params):
    return np.concatenate([np.asarray(params["bn"]["scale"]), np.asarray(params["bn"]["bias"])])


def tiny_adapter(method, v, **kw):
    options = Options(**{"lr": 0.05, "momentum": 0.9, **kw.pop("options", {})})
    return Adapter(TinyNet(), v, None, C, method, options, **kw)


def test_only_normalisation_affine_parameters_adapt():
    v = tiny_variables()
    labels = adapt_labels(v["params"])
    assert labels == {"fc1": {"kernel": "frozen", "bias": "frozen"}, "bn": {"scale": "adapt", "bias": "adapt"},
                      "fc2": {"kernel": "frozen", "bias": "frozen"}}
    assert adapt_labels(v["params"], r"^fc2/")["fc2"] == {"kernel": "adapt", "bias": "adapt"}
    assert sum(float(a) for a in jax.tree.leaves(adapt_mask(labels))) == 2.0
    # frozen parameters hold no optimizer state: the momentum trace exists for the two BN vectors only
    sizes = sorted(a.size for a in jax.tree.leaves(make_tta_optimizer(labels, 0.1, 0.9).init(v["params"])))
    assert sizes == [6, 6]


def batches(n, b=8, seed=10):
    r = np.random.default_rng(seed)
    return [r.standard_normal((b, 4)) for _ in range(n)]


@pytest.mark.parametrize("norm_stats", ["batch", "source"])
def test_tent_online_update_equals_numpy_sgd_on_batchnorm_affine(norm_stats):
    v, lr, mom = tiny_variables(), 0.05, 0.9
    xs = batches(2)
    adapter = tiny_adapter("tent", v, norm_stats=norm_stats)
    out = adapter.run(xs)
    use_batch = norm_stats == "batch"
    theta, trace = theta_of(v["params"]), np.zeros(12)
    for k, x in enumerate(xs):
        np.testing.assert_allclose(out["logits"][8 * k: 8 * k + 8], np_logits(v, theta, x, use_batch),
                                   rtol=1e-9, atol=1e-9)
        g = fd_grad(lambda t: np.mean(np_entropy_rows(np_logits(v, t, x, use_batch))), theta)
        trace = g + mom * trace
        theta = theta - lr * trace
    np.testing.assert_allclose(theta_of(out["state"].params), theta, rtol=1e-7, atol=1e-9)
    for name in ("fc1", "fc2"):  # frozen: unchanged
        np.testing.assert_array_equal(np.asarray(out["state"].params[name]["kernel"]), v["params"][name]["kernel"])
    # episodic: every batch starts from the source model, nothing carries over from earlier batches
    episodic = adapter.run(xs, episodic=True, steps=2)
    np.testing.assert_allclose(episodic["logits"][8:], adapter.run(xs[1:], episodic=True, steps=2)["logits"],
                               rtol=1e-12)
    assert not np.allclose(episodic["logits"][8:], out["logits"][8:])  # continual carries the update over
    assert adapter.compilations == 1  # one jitted update step for every stream and mode


def np_fisher(v, xs):
    """EATA's Fisher on the BatchNorm affine parameters: mean over batches of the squared gradient of
    the cross-entropy with the model's own predictions as labels (finite differences)."""
    theta = theta_of(v["params"])
    total = np.zeros(12)
    for x in xs:
        y = np.argmax(np_logits(v, theta, x), -1)

        def ce(t, x=x, y=y):
            z = np_logits(v, t, x)
            logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
            return -np.mean(logp[np.arange(len(y)), y])

        total += fd_grad(ce, theta) ** 2
    return total / len(xs)


def test_eata_fisher_and_online_updates_equal_numpy():
    v, lr, mom, alpha = tiny_variables(), 0.05, 0.9, 50.0
    xs, fisher_xs = batches(3, seed=11), batches(2, seed=12)
    theta0 = theta_of(v["params"])
    h0 = np_entropy_rows(np_logits(v, theta0, xs[0]))
    frac = float(np.sort(h0)[5] + 1e-7) / math.log(C)  # E0 keeps about 6 of 8 samples
    opts = {"margin_fraction": frac, "d_margin": 0.9999, "fisher_alpha": alpha, "lr": lr}
    adapter = tiny_adapter("eata", v, options=opts, fisher_batches=fisher_xs)
    F = np_fisher(v, fisher_xs)
    np.testing.assert_allclose(theta_of(adapter.const["fisher"]), F, rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(adapter.const["fisher"]["fc1"]["kernel"]), 0.0)
    out = adapter.run(xs)
    e0, theta, trace, m = frac * math.log(C), theta0.copy(), np.zeros(12), np.zeros(C)
    selected = []
    for k, x in enumerate(xs):
        z = np_logits(v, theta, x)
        np.testing.assert_allclose(out["logits"][8 * k: 8 * k + 8], z, rtol=1e-9, atol=1e-9)
        mask, w = np_eata_parts(z, m, e0, 0.9999)
        selected.append(int(mask.sum()))
        if mask.any():
            def loss(t, x=x, frozen=(mask, w)):
                entropy = np_eata_entropy(np_logits(v, t, x), None, e0, None, frozen)
                return entropy + alpha * np.sum(F * (t - theta0) ** 2)

            trace = fd_grad(loss, theta) + mom * trace
            theta = theta - lr * trace
            mean_p = np_softmax(z)[mask].mean(0)
            m = mean_p if not m.any() else 0.9 * m + 0.1 * mean_p
    assert out["selected"].tolist() == selected and 0 < min(selected) and max(selected) < 8
    np.testing.assert_allclose(theta_of(out["state"].params), theta, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(out["state"].probs_ema), m, rtol=1e-6)
    adapter.run(xs[:2], episodic=True)
    assert adapter.compilations == 1


def test_eata_without_selected_samples_changes_nothing():
    v = tiny_variables()
    out = tiny_adapter("eata", v, options={"margin_fraction": 1e-6, "fisher_alpha": 0.0}).run(batches(2))
    assert out["selected"].tolist() == [0, 0]
    np.testing.assert_array_equal(theta_of(out["state"].params), theta_of(v["params"]))
    np.testing.assert_array_equal(np.asarray(out["state"].probs_ema), 0.0)


def test_sar_sharpness_aware_update_equals_numpy():
    v, lr, mom, rho = tiny_variables(), 0.05, 0.9, 0.05
    xs = batches(2, seed=13)
    theta = theta_of(v["params"])
    frac = float(np.sort(np_entropy_rows(np_logits(v, theta, xs[0])))[5] + 1e-7) / math.log(C)
    adapter = tiny_adapter("sar", v, options={"margin_fraction": frac, "rho": rho, "reset_below": 0.0})
    out = adapter.run(xs)
    e0, trace, ema = frac * math.log(C), np.zeros(12), None
    for x in xs:
        h1 = np_entropy_rows(np_logits(v, theta, x))
        m1 = h1 < e0
        g1 = fd_grad(lambda t, x=x, m1=m1: np_reliable_entropy(np_logits(v, t, x), e0, frozen=m1), theta)
        pert = theta + rho * g1 / (np.linalg.norm(g1) + 1e-12)
        m2 = m1 & (np_entropy_rows(np_logits(v, pert, x)) < e0)
        second = np_reliable_entropy(np_logits(v, pert, x), e0, frozen=m2)
        g2 = fd_grad(lambda t, x=x, m2=m2: np_reliable_entropy(np_logits(v, t, x), e0, frozen=m2), pert)
        trace = g2 + mom * trace
        theta = theta - lr * trace
        ema = second if ema is None else 0.9 * ema + 0.1 * second
    np.testing.assert_allclose(theta_of(out["state"].params), theta, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(out["state"].loss_ema), ema, rtol=1e-6)
    assert out["resets"] == 0
    adapter.run(xs, steps=2)
    assert adapter.compilations == 1


def test_sar_recovers_the_source_model_when_the_loss_average_collapses():
    v = tiny_variables()
    opts = {"margin_fraction": 1.0, "reset_below": 100.0}  # every average is "collapsed"
    out = tiny_adapter("sar", v, options=opts).run(batches(3))
    assert out["resets"] == 3
    np.testing.assert_array_equal(theta_of(out["state"].params), theta_of(v["params"]))
    # (without recovery the parameters move: test_sar_sharpness_aware_update_equals_numpy)


# ---------------------------------------------------------------- TENT episodic, batch of one, lr = 0


class TinyConv(nn.Module):
    """Conv 3x3 -> BatchNorm -> ReLU -> global mean -> Dense(3): one image has spatial statistics."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.relu(BatchNorm(use_running_average=not train, name="bn")(x))
        return nn.Dense(C, name="fc")(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("lr", [0.0, 0.5])
def test_tent_episodic_batch_of_one_predicts_as_the_source_model(lr):
    """The issue's check, read as: with nothing carried between batches (episodic) and lr = 0,
    TENT's predictions are the source model's. With the source running statistics they equal
    ``jtl eval``'s (eval mode) exactly; with TENT's test-batch statistics each image is normalised
    by its own statistics, so they equal the source model's train-mode forward on that image alone
    (not eval mode: one image's statistics are not the running ones). Episodic with one step predicts
    before the update, so any lr gives the same; continual with lr > 0 does not."""
    model, r = TinyConv(), np.random.default_rng(0)
    v = jax.tree.map(np.asarray, model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1))))
    v["batch_stats"]["bn"] = {"mean": r.standard_normal(4).astype(np.float32),
                              "var": (1 + r.random(4)).astype(np.float32)}
    images = r.integers(0, 256, (5, 6, 6, 1)).astype(np.uint8)
    norm = {"mean": [0.4], "std": [0.3], "image_size": 6, "channels": 1}
    x = jnp.asarray((images.astype(np.float32) * np.float32(1 / 255.0) - np.float32(0.4)) / np.float32(0.3))
    eval_logits = np.asarray(model.apply(v, x, train=False))
    own_stats = np.concatenate([np.asarray(model.apply(v, x[i:i + 1], train=True, mutable=["batch_stats"])[0])
                                for i in range(len(x))])
    assert np.abs(eval_logits - own_stats).max() > 1e-2  # the two readings differ
    stream = [images[i:i + 1] for i in range(len(images))]
    for norm_stats, ref in (("source", eval_logits), ("batch", own_stats)):
        adapter = Adapter(model, v, norm, C, "tent", Options(lr=lr), norm_stats=norm_stats)
        np.testing.assert_allclose(adapter.run(stream, episodic=True)["logits"], ref, rtol=1e-5, atol=1e-6)
        if lr and norm_stats == "source":  # continual: the updates reach later predictions
            assert np.abs(adapter.run(stream)["logits"][1:] - ref[1:]).max() > 1e-4


def test_resnet_adapts_batchnorm_only():
    from flax.traverse_util import flatten_dict

    from jtl.models.transfer import TransferModel

    v = jax.eval_shape(TransferModel("cifar_resnet8", 10).init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    flat = {"/".join(k): lab for k, lab in flatten_dict(adapt_labels(v["params"])).items()}
    bn_modules = {"/".join(k[:-1]) for k in flatten_dict(v["batch_stats"])}  # the BatchNorms, by their statistics
    adapted = {p.rpartition("/")[0] for p, lab in flat.items() if lab == "adapt"}
    assert adapted == bn_modules and all(p.endswith(("scale", "bias")) for p, lab in flat.items() if lab == "adapt")


def test_layernorm_family_adapts_its_layernorms():
    from flax.traverse_util import flatten_dict

    from jtl.models.transfer import TransferModel

    v = jax.eval_shape(TransferModel("vit_tiny_patch16_224", 10).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    labels = flatten_dict(adapt_labels(v["params"]))
    adapted = {"/".join(k) for k, lab in labels.items() if lab == "adapt"}
    # ViT's LayerNorms: norm1 and norm2 of each of the 12 blocks and the final norm (timm's names)
    expected = {f"backbone/blocks_{i}/{n}/{p}" for i in range(12) for n in ("norm1", "norm2")
                for p in ("scale", "bias")}
    assert adapted == expected | {"backbone/norm/scale", "backbone/norm/bias"}


# ---------------------------------------------------------------- Fisher, and the command line


def test_estimate_fisher_needs_batches():
    v = tiny_variables()
    with pytest.raises(ValueError):
        estimate_fisher(lambda p, x: x, v["params"], adapt_mask(adapt_labels(v["params"])), [])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from jtl.train import train

    workdir = tmp_path_factory.mktemp("tta") / "run"
    train(tiny_config(total_steps=5), workdir)
    return workdir


def test_cli_eval_adapt_reports_online_accuracy(tiny_run):
    """``jtl eval --adapt tent`` with lr 0 and the source statistics, on a real run: the source
    model's accuracy exactly, the step compiled once."""
    import json

    from jtl import data as jdata
    from jtl.tta.stream import test_stream

    rc, out, err = run_jtl("eval", "--workdir", tiny_run, "--split", "digits:test")
    plain = json.loads(out.strip().splitlines()[-1])
    n = plain["count"]
    b = max(d for d in range(1, 65) if n % d == 0)
    rc, out, err = run_jtl("eval", "--workdir", tiny_run, "--split", "digits:test", "--adapt", "tent",
                           "--batch-size", b, "--lr", "0", "--norm-stats", "source")
    assert rc == 0, err
    adapted = json.loads(out.strip().splitlines()[-1])
    a = adapted["adapt"]
    assert adapted["count"] == n and adapted["top1"] == plain["top1"]
    assert a["compilations"] == 1 and a["batches"] == n // b and a["dropped"] == 0 and a["mode"] == "continual"
    written = json.loads((tiny_run / "eval_digits_test_tent_step5.json").read_text())
    assert written["top1"] == adapted["top1"] and written["adapt"]["lr"] == 0.0
    # a batch that does not divide the split: full batches only, the remainder counted
    norm = {"mean": [0.5], "std": [0.25], "image_size": 8, "channels": 1}
    src = jdata.load("digits", "test")
    batches, dropped = test_stream(src, batch_size=32, order="shuffled", seed=1, normalization=norm)
    sizes = [len(y) for _, y in batches]
    assert dropped == len(src) % 32 and sizes == [32] * (len(src) // 32)


@pytest.mark.slow
def test_cli_eval_adapt_eata_episodic_shuffled(tiny_run):
    import json

    rc, out, err = run_jtl("eval", "--workdir", tiny_run, "--split", "digits:test", "--adapt", "eata",
                           "--batch-size", "32", "--fisher-size", "64", "--mode", "episodic", "--order", "shuffled")
    assert rc == 0, err
    a = json.loads(out.strip().splitlines()[-1])["adapt"]
    assert a["mode"] == "episodic" and a["order"] == "shuffled" and a["compilations"] == 1


@pytest.mark.parametrize("args,pattern", [
    (("--mode", "episodic"), "add --adapt"),
    (("--adapt", "tent", "--batch-size", "0"), "--batch-size"),
    (("--adapt", "sar", "--lr", "-1"), "--lr"),
    (("--adapt", "tent", "--batch-size", "100000"), "fewer than --batch-size"),
    (("--adapt", "tent", "--adapt-params", "^nothing$"), "matches no parameter"),
])
def test_cli_bad_adapt_options_are_one_line_errors(tiny_run, args, pattern):
    before = sorted(p.name for p in tiny_run.iterdir())
    one_line_error(run_jtl("eval", "--workdir", tiny_run, "--split", "digits:test", *args), pattern)
    assert sorted(p.name for p in tiny_run.iterdir()) == before


# ---------------------------------------------------------------- the Fashion-MNIST-C corruptions added for the stream


def test_corruptions_follow_their_formulas():
    import colorsys

    from jtl.data import shifts

    r = np.random.default_rng(0)
    gray = r.integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
    rgb = r.integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    # brightness: HSV value + c, clipped (gray: the pixel itself), c = .3 at severity 5
    out = shifts.apply(gray, shifts.parse_shifts("brightness@5"), seed=0)
    np.testing.assert_array_equal(out, np.round(np.clip(gray / 255 + 0.3, 0, 1) * 255).astype(np.uint8))
    out = shifts.apply(rgb, shifts.parse_shifts("brightness@2"), seed=0)
    for px, got in zip(rgb.reshape(-1, 3) / 255, out.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(*px)
        np.testing.assert_allclose(got, np.round(np.array(colorsys.hsv_to_rgb(h, s, min(v + 0.1, 1))) * 255), atol=1)
    # shot: Poisson(c x / 255) / c; on a constant image mean x and std 255 sqrt(x / 255 / c)
    flat = np.full((20, 28, 28, 1), 128, np.uint8)
    out = shifts.apply(flat, shifts.parse_shifts("shot@5"), seed=0).astype(np.float64)
    assert abs(out.mean() - 128) < 1.0 and abs(out.std() / (255 * math.sqrt(128 / 255 / 50)) - 1) < 0.05
    # impulse: a fraction c of the values become 0 or 255 with even odds
    out = shifts.apply(flat, shifts.parse_shifts("impulse@5"), seed=0)
    changed = out != 128
    assert abs(changed.mean() - 0.07) < 0.005 and set(np.unique(out[changed])) == {0, 255}
    assert abs((out[changed] == 255).mean() - 0.5) < 0.05
    # pixelate: a box down- and up-sampling keeps a constant image and the mean, and smooths
    out = shifts.apply(gray, shifts.parse_shifts("pixelate@5"), seed=0).astype(np.float64)
    assert out.shape == gray.shape
    assert abs(out.mean() - gray.mean()) < 2 and np.abs(np.diff(out, axis=2)).mean() < 0.8 * np.abs(
        np.diff(gray.astype(np.float64), axis=2)).mean()
    np.testing.assert_array_equal(shifts.apply(flat[:1], shifts.parse_shifts("pixelate@5"), seed=0), flat[:1])
