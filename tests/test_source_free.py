"""Source-free adaptation (SHOT, NRC): the losses against numpy versions of the papers' formulas,
and runs that start from a source run's directory alone.

The numpy references are written from the formulas with loops and no shared code; the
gradients are checked against central finite differences of those references (the banks and
neighbour choices, constants in the losses, are constants there too).
"""

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtl.losses as L
from loss_helpers import check_grad, np_softmax, rand


@pytest.fixture
def x64():  # the loss tests run in float64 (loss_helpers' fixture, not autouse here: the runs stay float32)
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- numpy references


def np_unit(v):
    return v / max(math.sqrt(sum(x * x for x in v)), 1e-12)


def np_cos_distance(a, b):
    na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
    return 1.0 if nb == 0 else 1.0 - float(a @ b) / (na * nb)


def np_shot_labels(logits, feats, rounds=1):
    n, k = logits.shape
    f = np.array([np_unit(np.append(row, 1.0)) for row in feats])
    p = np_softmax(logits)
    predicted = {int(np.argmax(row)) for row in p}

    def nearest(w):
        cents = []
        for c in range(k):
            cents.append(sum(w[i, c] * f[i] for i in range(n)) / (sum(w[i, c] for i in range(n)) + 1e-8))
        labels = []
        for i in range(n):
            d = {c: np_cos_distance(f[i], cents[c]) for c in sorted(predicted)}
            labels.append(min(d, key=lambda c: (d[c], c)))
        return np.array(labels)

    labels = nearest(p)
    for _ in range(rounds):
        labels = nearest(np.eye(k)[labels])
    return labels


def np_nrc_parts(index, bank, k, kk, r):
    """Neighbours and affinities by the definitions, one sample at a time."""
    out = []
    for i in index:
        sims = {j: float(bank[i] @ bank[j]) for j in range(len(bank)) if j != i}
        near = sorted(sims, key=lambda j: -sims[j])[:k]
        rows = []
        for j in near:
            sj = {m: float(bank[j] @ bank[m]) for m in range(len(bank)) if m != j}
            nn_j = sorted(sj, key=lambda m: -sj[m])[:kk]
            rows.append((j, 1.0 if i in nn_j else r, [(m, 0.0 if m == i else r) for m in nn_j]))
        out.append(rows)
    return out


def np_nrc(logits, index, bank, scores, k, kk, r):
    p = np_softmax(logits)
    total = 0.0
    for b, rows in enumerate(np_nrc_parts(index, bank, k, kk, r)):
        for j, a, expanded in rows:
            total += a * float(scores[j] @ p[b])
            total += sum(am * float(scores[m] @ p[b]) for m, am in expanded)
    return -total / len(index)


def np_diversity(logits):
    pbar = np_softmax(logits).mean(axis=0)
    return float(sum(q * math.log(q) for q in pbar))


# ---------------------------------------------------------------- losses


def test_shot_pseudo_labels_equal_the_numpy_clustering(x64):
    labels = jax.jit(lambda z, f: [L.shot_pseudo_labels(z, f, rounds=r) for r in (0, 1, 2)])
    n, k, d = 40, 4, 6
    logits, feats = rand(n, k, seed=0, scale=2.0), rand(n, d, seed=10)
    logits[:, -1] -= 20.0  # a class no sample predicts: never a pseudo-label
    for rounds, got in enumerate(labels(logits, feats)):
        got = np.asarray(got)
        np.testing.assert_array_equal(got, np_shot_labels(logits, feats, rounds))
        assert got.dtype == np.int32 and (k - 1) not in set(got.tolist())
    # well separated clusters: the clustering recovers them whatever the (noisy) predictions say
    centres = 10.0 * np.eye(6)[:4]
    feats = np.concatenate([centres[c] + 0.1 * rand(10, 6, seed=c) for c in range(4)])
    truth = np.repeat(np.arange(4), 10)
    logits = 3.0 * np.eye(4)[truth] + 1.5 * rand(40, 4, seed=7)
    assert set(np.argmax(logits, 1).tolist()) == {0, 1, 2, 3} and np.any(np.argmax(logits, 1) != truth)
    np.testing.assert_array_equal(np.asarray(labels(logits, feats)[1]), truth)


def test_nrc_neighbours_and_affinities_by_definition(x64):
    bank = np.array([np_unit(v) for v in rand(25, 4, seed=3)])
    index = np.array([0, 7, 24])
    k, kk, r = 3, 4, 0.25
    near, a_near, expanded, a_expanded = (np.asarray(x) for x in jax.jit(
        lambda i, b: L.nrc_neighbours(i, b, k=k, kk=kk, r=r))(index, bank))
    for b, rows in enumerate(np_nrc_parts(index, bank, k, kk, r)):
        assert near[b].tolist() == [j for j, _, _ in rows]
        np.testing.assert_allclose(a_near[b], [a for _, a, _ in rows])
        assert expanded[b].tolist() == [m for _, _, e in rows for m, _ in e]
        np.testing.assert_allclose(a_expanded[b], [a for _, _, e in rows for _, a in e])
    assert np.any(a_near == 1.0) and np.any(a_near == r)  # reciprocal and one-way neighbours both occur
    assert np.any(a_expanded == 0.0)  # the sample itself among its neighbours' neighbours: weight 0


def test_nrc_loss_value_and_gradient(x64):
    bank = np.array([np_unit(v) for v in rand(20, 5, seed=4)])
    scores = np_softmax(rand(20, 4, seed=5, scale=2.0))
    index = np.array([2, 11, 19, 5])
    logits = rand(4, 4, seed=6)
    k, kk, r = 2, 3, 0.3
    loss = lambda z, s=scores: L.nrc(z, index, bank, s, k=k, kk=kk, r=r)
    assert float(jax.jit(loss)(logits)) == pytest.approx(np_nrc(logits, index, bank, scores, k, kk, r), rel=1e-12)
    check_grad(loss, lambda z: np_nrc(z, index, bank, scores, k, kk, r), logits)
    # the banks are constants: no gradient reaches them
    assert not np.any(np.asarray(jax.jit(jax.grad(lambda s: loss(logits, s)))(scores)))


def test_diversity_value_gradient_and_range(x64):
    z = rand(6, 5, seed=8, scale=2.0)
    cases = jax.jit(lambda z: (L.diversity(z), L.information_maximization(z) - L.entropy(z),
                               L.diversity(jnp.zeros((4, 5))), L.diversity(50.0 * jnp.eye(5)[jnp.zeros(4, int)])))
    value, im_minus_entropy, spread, collapsed = (float(x) for x in cases(z))
    assert value == pytest.approx(np_diversity(z), rel=1e-12)
    check_grad(L.diversity, np_diversity, z)
    assert spread == pytest.approx(-math.log(5), rel=1e-12) and collapsed == pytest.approx(0.0, abs=1e-12)
    # SHOT's information maximisation is the mean entropy plus this term
    assert im_minus_entropy == pytest.approx(value, rel=1e-10)


# ---------------------------------------------------------------- runs from a source run's directory

from jtl.config import resolve  # noqa: E402
from jtl.train.loop import Trainer  # noqa: E402
from test_adapt import da_config  # noqa: E402
from train_helpers import one_line_error, run_jtl, with_overrides  # noqa: E402

TARGET = "digits:invert"
BOTH = {"im": 1.0, "shot": 0.3, "nrc": 1.0, "diversity": 1.0}  # SHOT's and NRC's pieces: every kind of bank


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A short digits source run; then a data directory holding only the target's prepared images,
    where the digits cache is a file: reading (or re-preparing) the source data there fails."""
    shared = tmp_path_factory.getbasetemp() / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTL_DATA_DIR", str(shared))
        workdir = tmp_path_factory.mktemp("sfda") / "source"
        Trainer(da_config("source_only", total_steps=2, **{"adapt.bottleneck_dim": 32}), workdir).run()
    target_only = tmp_path_factory.mktemp("target_only_data")
    shutil.copytree(shared / "jtl_shifted" / "digits.invert.s0", target_only / "jtl_shifted" / "digits.invert.s0")
    (target_only / "jtl_digits").write_text("the source data is gone")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTL_DATA_DIR", str(target_only))
        yield workdir
    assert (target_only / "jtl_digits").read_text() == "the source data is gone"  # nothing rebuilt it
    assert sorted(p.name for p in target_only.iterdir()) == ["jtl_digits", "jtl_shifted"]


def sfda_config(source, loss, **kw):
    base = {
        "model": {"name": "cifar_resnet8", "num_classes": 10, "init": str(source)},
        "data": {"train": TARGET, "eval": (f"target_test={TARGET}:test",), "image_size": 8, "channels": 1,
                 "augment": ()},
        "adapt": {"target": TARGET, "bottleneck_dim": 32, "source_free": True},
        "loss": loss, "loss_options": {n: o for n, o in (("shot", {"interval": 2}), ("nrc", {"k": 3, "kk": 2}))
                                       if n in loss},
        "freeze": (r"^head/",),
        "batch_size": 16, "eval_batch_size": 64, "total_steps": 8, "eval_every": 0, "checkpoint_every": 4,
        "log_every": 1, "progress": False,
        "optim": {"lr": 0.01, "schedule": "inv", "groups": (("backbone", r"^backbone/", 0.1),
                                                             ("heads", r"^(?!backbone/)", 1.0))},
    }
    return resolve(with_overrides(base, kw))


def _rows(workdir):
    """The logged rows, without the throughput (a timing)."""
    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("images_per_s")} for r in rows]


def test_interrupted_run_resumes_bitwise_without_source_data(source_run, tmp_path):
    """SHOT and NRC in one run (a bank refilled every 2 steps, banks updated every step), with the
    source data gone: killed after step 4's checkpoint, it resumes to the uninterrupted run's
    state bit for bit, memory banks included."""
    cfg = sfda_config(source_run, BOTH)
    full = Trainer(cfg, tmp_path / "full")
    full.run()
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "8")  # as if killed between the two checkpoints
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = Trainer(cfg, tmp_path / "cut")
    assert resumed.run()["resumed_from"] == 4
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")
    flat_full = jax.tree_util.tree_leaves_with_path(full.state)
    flat_cut = dict(jax.tree_util.tree_leaves_with_path(resumed.state))
    for path, leaf in flat_full:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_cut[path]), err_msg=jax.tree_util.keystr(path))
    bank = {k: np.asarray(v) for k, v in full.state.bank.items()}
    assert set(bank) == {"shot_labels", "nrc_features", "nrc_scores"}
    assert len(np.unique(bank["shot_labels"])) > 1 and bank["shot_labels"].max() < 10
    np.testing.assert_allclose(np.linalg.norm(bank["nrc_features"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(bank["nrc_scores"].sum(axis=1), 1.0, rtol=1e-5)
    head0 = resolve_head(source_run)
    np.testing.assert_array_equal(np.asarray(full.state.params["head"]["kernel"]), head0)  # the hypothesis is kept
    rows = _rows(tmp_path / "full")
    assert all(f"train/loss/{n}" in rows[0] for n in BOTH) and "train/shot/agreement" in rows[0]


def resolve_head(workdir):
    from jtl.train.checkpoint import restore_variables

    return np.asarray(restore_variables(workdir, "latest")["params"]["head"]["kernel"])


def test_checkpoint_written_before_banks_existed_resumes(tmp_path):
    """A train state checkpointed before ``TrainState.bank`` existed restores into today's state
    (bank None), and is not taken for a damaged checkpoint."""
    from flax import struct

    from jtl.train.checkpoint import Checkpoints
    from jtl.train.state import TrainState

    @struct.dataclass
    class Before:  # TrainState's fields before the memory banks
        step: jax.Array
        params: dict
        batch_stats: dict
        opt_state: tuple
        rng: jax.Array
        anchor: dict | None = None

    old = Before(jnp.int32(3), {"w": jnp.arange(3.0)}, {"m": jnp.ones(2)}, (jnp.zeros(3),), jnp.arange(2, dtype=jnp.uint32))
    ckpt = Checkpoints(tmp_path / "checkpoints", async_save=False)
    ckpt.save(3, old, {"next_index": 7})
    ckpt.close()
    new = TrainState(*(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), getattr(old, f))
                       for f in ("step", "params", "batch_stats", "opt_state", "rng")))
    ckpt = Checkpoints(tmp_path / "checkpoints", async_save=False)
    state, data, step = ckpt.restore_latest(new)
    ckpt.close()
    assert isinstance(state, TrainState) and state.bank is None and state.anchor is None
    assert step == 3 and data == {"next_index": 7}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), [0.0, 1.0, 2.0])
    assert not (tmp_path / "checkpoints.corrupt").exists()


def test_source_free_mistakes_are_one_line_errors(source_run, tmp_path):
    """Source data in the loss, or a model.init that is not a run directory: exit 2, one line."""
    config = tmp_path / "sfda.py"
    config.write_text(f"""
def get_config(arg=None):
    loss, init = arg.split("@")
    return {{"model": {{"name": "cifar_resnet8", "num_classes": 10, "init": init}},
            "data": {{"train": "{TARGET}", "eval": ("{TARGET}:test",), "image_size": 8, "channels": 1}},
            "adapt": {{"target": "{TARGET}", "bottleneck_dim": 32, "source_free": True}},
            "loss": {{loss: 1.0}}, "batch_size": 16, "total_steps": 2, "progress": False}}
""")
    one_line_error(run_jtl("train", "--config", f"{config}:ce@{source_run}", "--workdir", tmp_path / "a"),
                   "loss pieces ['ce'] read labelled source data")
    one_line_error(run_jtl("train", "--config", f"{config}:shot@{tmp_path}", "--workdir", tmp_path / "b"),
                   "starts from a source run's directory")
    one_line_error(run_jtl("train", "--config", f"{config}:shot@{source_run}", "--workdir", tmp_path / "c",
                           "--config.adapt.bottleneck_dim=16"), "bottleneck/", "keeps the source model")


@pytest.mark.slow
def test_seeds_vectorized_equal_runs_alone(source_run, tmp_path):
    """Two seeds (each its own target split and banks) trained as one vmapped program equal the runs alone."""
    from jtl.train.vector import VectorTrainer, plan_groups

    cfgs = [sfda_config(source_run, BOTH, seed=s, total_steps=5, checkpoint_every=0) for s in (0, 1)]
    assert plan_groups(cfgs) == [[0, 1]]
    vector = VectorTrainer(cfgs, [tmp_path / "v0", tmp_path / "v1"])
    vector.run()
    for i, cfg in enumerate(cfgs):
        solo = Trainer(cfg, tmp_path / f"s{i}")
        solo.run()
        loss = lambda wd: [r["train/loss"] for r in _rows(wd)]
        np.testing.assert_allclose(loss(tmp_path / f"v{i}"), loss(tmp_path / f"s{i}"), rtol=1e-5)
        for name, bank in solo.state.bank.items():
            np.testing.assert_allclose(np.asarray(vector.state.bank[name][i]), np.asarray(bank), rtol=1e-4, atol=1e-5)
