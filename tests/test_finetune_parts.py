"""Fine-tuning parts against independent references: regularizers (numpy), metrics (scikit-learn),
optimizer partitions and schedules (hand-computed SGD), gradient accumulation."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtl.config import resolve
from jtl.errors import ConfigError
from jtl.losses import regularizers as R
from jtl.optim import label_params, make_optimizer, make_schedule
from jtl.train.metrics import classification_metrics

rng = np.random.default_rng(0)


def test_l2sp_matches_numpy():
    shared = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
    shared0 = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
    new = {"w": rng.normal(size=(4, 2))}
    want = 0.3 / 2 * (np.sum((shared["a"] - shared0["a"]) ** 2) + np.sum((shared["b"] - shared0["b"]) ** 2)) \
        + 0.7 / 2 * np.sum(new["w"] ** 2)
    got = R.l2sp(jax.tree.map(jnp.asarray, shared), shared0, new, alpha=0.3, beta=0.7)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # Gradient: alpha (w - w0) for shared parameters.
    g = jax.grad(lambda s: R.l2sp(s, shared0, alpha=0.3))(jax.tree.map(jnp.asarray, shared))
    np.testing.assert_allclose(g["a"], 0.3 * (shared["a"] - shared0["a"]), rtol=1e-5)


def test_delta_matches_numpy():
    fms = [rng.normal(size=(4, 5, 5, 3)), rng.normal(size=(4, 2, 2, 6))]
    fms0 = [rng.normal(size=f.shape) for f in fms]
    weights = [rng.uniform(size=3), rng.uniform(size=6)]
    want = 0.0
    for f, f0, w in zip(fms, fms0, weights):
        for c in range(f.shape[-1]):
            per_example = [np.linalg.norm((f[n, ..., c] - f0[n, ..., c]).ravel()) ** 2 for n in range(f.shape[0])]
            want += w[c] * np.mean(per_example)
    assert float(R.delta(fms, fms0, weights)) == pytest.approx(want, rel=1e-5)
    unweighted = sum(np.mean(np.sum((f - f0) ** 2, axis=(1, 2)), axis=0).sum() for f, f0 in zip(fms, fms0))
    assert float(R.delta(fms, fms0)) == pytest.approx(unweighted, rel=1e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_bss_matches_numpy_svd(k):
    f = rng.normal(size=(16, 8))
    s = np.linalg.svd(f, compute_uv=False)
    assert float(R.bss(jnp.asarray(f), k)) == pytest.approx(np.sum(np.sort(s)[:k] ** 2), rel=1e-4)


def test_lwf_matches_numpy():
    y, y0, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), 2.0
    p0 = np.exp(y0 / t) / np.exp(y0 / t).sum(-1, keepdims=True)
    logp = y / t - np.log(np.exp(y / t).sum(-1, keepdims=True))
    want = -(t**2) * np.mean(np.sum(p0 * logp, axis=-1))
    assert float(R.lwf(jnp.asarray(y), jnp.asarray(y0), temperature=t)) == pytest.approx(want, rel=1e-5)


def test_metrics_match_sklearn():
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, top_k_accuracy_score

    labels = rng.integers(0, 7, 300)
    logits = rng.normal(size=(300, 7)) + 2.0 * np.eye(7)[labels] * rng.uniform(size=(300, 1))
    m = classification_metrics(logits, labels)
    preds = logits.argmax(-1)
    assert m["top1"] == pytest.approx(np.mean(preds == labels))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5))
    assert m["macro_precision"] == pytest.approx(precision_score(labels, preds, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(recall_score(labels, preds, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0))
    np.testing.assert_array_equal(m["confusion_matrix"], confusion_matrix(labels, preds, labels=range(7)))
    np.testing.assert_allclose(m["per_class_accuracy"], recall_score(labels, preds, average=None))


PARAMS = {"conv1": {"kernel": np.ones((3, 3, 1, 2), np.float32)}, "layer1_0": {"bn1": {"scale": np.ones(2, np.float32)}},
          "fc": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}


def test_parameter_in_no_group_is_named():
    with pytest.raises(ConfigError, match="parameter layer1_0/bn1/scale matches no optimizer group"):
        label_params(PARAMS, [("head", r"^fc/", 1.0), ("stem", r"^conv1/", 1.0)])


def test_parameter_in_two_groups_is_named():
    with pytest.raises(ConfigError, match=r"parameter fc/(kernel|bias) matches several optimizer groups \(head, all\)"):
        label_params(PARAMS, [("head", r"^fc/", 1.0), ("all", r".", 1.0)], freeze=(r"^conv1", r"^layer1"))


def test_lr_multipliers_and_freezing_in_one_sgd_step():
    cfg = resolve({"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
                             "groups": (("head", r"^fc/", 1.0), ("backbone", r"^(?!fc/)", 0.1))},
                   "freeze": (r"^conv1/",)})
    tx = make_optimizer(cfg, PARAMS)
    grads = jax.tree.map(lambda p: np.full(p.shape, 2.0, np.float32), PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["fc"]["kernel"], -0.1 * 2.0)
    np.testing.assert_allclose(updates["layer1_0"]["bn1"]["scale"], -0.01 * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(updates["conv1"]["kernel"], 0.0)


def test_layer_decay_and_no_decay_in_one_sgd_step():
    """update = -lr * d^(L+1-k) * (g + wd * p), wd = 0 on no_decay parameters; k: 0 for the stem,
    K for stage layerK, L+1 = 4 for what follows the backbone (cifar_resnet8: L = 3 stages)."""
    from flax import traverse_util

    cfg = resolve({"model": {"name": "cifar_resnet8", "num_classes": 3},
                   "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.01, "schedule": "constant",
                             "layer_decay": 0.5, "no_decay": (r"/bias$", r"/bn\d*/scale$")}})
    stem = {"conv1": {"kernel": np.ones((3, 3, 3, 16), np.float32)}, "bn1": {"scale": np.ones(16, np.float32)}}
    params = {"backbone": {**stem, "layer2_0": {"conv1": {"kernel": np.ones((3, 3, 16, 32), np.float32)},
                                                "bn1": {"bias": np.ones(32, np.float32)}}},
              "head": {"kernel": np.ones((64, 3), np.float32), "bias": np.ones(3, np.float32)}}
    params = jax.tree.map(lambda p: p * 3.0, params)
    tx = make_optimizer(cfg, params)
    grads = jax.tree.map(lambda p: np.full(p.shape, 2.0, np.float32), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    want = {("backbone", "conv1", "kernel"): (0, True), ("backbone", "bn1", "scale"): (0, False),
            ("backbone", "layer2_0", "conv1", "kernel"): (2, True), ("backbone", "layer2_0", "bn1", "bias"): (2, False),
            ("head", "kernel"): (4, True), ("head", "bias"): (4, False)}
    got = traverse_util.flatten_dict(updates)
    assert set(got) == set(want)
    for key, (k, decays) in want.items():
        expected = -0.1 * 0.5 ** (4 - k) * (2.0 + (0.01 * 3.0 if decays else 0.0))
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, err_msg="/".join(key))


def test_the_vit_recipe_decays_layers_and_spares_norms_and_tokens():
    """configs/finetune_vit.py on a ViT: BEiT's numbering (tokens and patch embedding 0, block i
    i + 1, norm and head L + 1) gives each parameter lr d^(L + 1 - k); biases, norms, tokens and
    the position embedding get no weight decay."""
    from flax import traverse_util

    from jtl.config import load_config
    from jtl.models.transfer import TransferModel
    from jtl.optim import refine_labels

    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "finetune_vit.py") + ":digits,model=vit_tiny_patch16_224,init=,size=32")
    model = TransferModel("vit_tiny_patch16_224", 10, image_size=32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    labels = traverse_util.flatten_dict(
        refine_labels(label_params(shapes["params"], cfg.optim.groups, cfg.freeze), cfg, cfg.model.name))
    depth = 12
    want = {"backbone/cls_token": f"all|no_decay|layer{depth + 1}",
            "backbone/pos_embed": f"all|no_decay|layer{depth + 1}",
            "backbone/patch_embed/proj/kernel": f"all|layer{depth + 1}",
            "backbone/blocks_0/attn/qkv/kernel": f"all|layer{depth}",
            "backbone/blocks_0/norm1/scale": f"all|no_decay|layer{depth}",
            "backbone/blocks_11/mlp/fc2/bias": "all|no_decay|layer1",
            "backbone/norm/scale": "all|no_decay|layer0",
            "head/kernel": "all|layer0"}
    got = {"/".join(k): v for k, v in labels.items()}
    for path, label in want.items():
        assert got[path] == label, path


def test_a_freeze_regex_matching_nothing_is_refused():
    """A pattern written for another layout (``^layer1``: today's paths are ``backbone/layer1_0/...``)
    would otherwise freeze nothing, silently."""
    with pytest.raises(ConfigError, match=r"freeze regex '\^layer1' matches no parameter; parameters are named like backbone/"):
        label_params({"backbone": {"layer1_0": {"kernel": np.ones(2)}}}, [("all", r".", 1.0)], freeze=(r"^layer1",))


def test_inverse_decay_and_warmup_schedules():
    cfg = resolve({"total_steps": 1000, "optim": {"lr": 0.01, "schedule": "inv", "inv_gamma": 10.0, "inv_power": 0.75}})
    s = make_schedule(cfg)
    for step in (0, 250, 999):
        assert float(s(step)) == pytest.approx(0.01 * (1 + 10 * step / 1000) ** -0.75, rel=1e-6)
    cfg = resolve({"total_steps": 100, "optim": {"lr": 0.1, "schedule": "cosine", "warmup_steps": 10}})
    s = make_schedule(cfg)
    assert float(s(5)) == pytest.approx(0.05)
    assert float(s(10 + 45)) == pytest.approx(0.1 * (1 + np.cos(np.pi * 45 / 90)) / 2, rel=1e-5)
    cfg = resolve({"total_steps": 100, "optim": {"lr": 1.0, "schedule": "step", "step_boundaries": (0.5, 0.75)}})
    s = make_schedule(cfg)
    assert [float(s(i)) for i in (49, 51, 80)] == pytest.approx([1.0, 0.1, 0.01])


def test_gradient_accumulation_equals_full_batch_gradient():
    """Without BatchNorm, accumulating 4 micro-batches gives the full batch's update."""
    from jtl.train.state import TrainState
    from jtl.train.steps import make_loss_fn, make_train_step

    w0 = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
    fwd = lambda v, b, train, rng=None: ({"logits": b["image"] @ v["params"]["w"], "features": {}}, v["batch_stats"])
    loss_fn = make_loss_fn(fwd, [("ce", 1.0)], {}, total_steps=10)
    tx = optax.sgd(0.5)
    batch = {"image": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32), "label": jnp.asarray(rng.integers(0, 3, 16))}
    state = lambda: TrainState(jnp.zeros((), jnp.int32), w0, {}, tx.init(w0), jax.random.key_data(jax.random.key(0)))
    s1, m1 = make_train_step(loss_fn, tx, accum=1)(state(), batch)
    s4, m4 = make_train_step(loss_fn, tx, accum=4)(state(), batch)
    np.testing.assert_allclose(s4.params["w"], s1.params["w"], rtol=1e-5, atol=1e-6)
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)


def test_clipping_bounds_the_update():
    cfg = resolve({"optim": {"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
                             "clip_norm": 0.5, "groups": (("all", r".", 1.0),)}})
    tx = make_optimizer(cfg, PARAMS)
    grads = jax.tree.map(lambda p: np.full(p.shape, 3.0, np.float32), PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)
