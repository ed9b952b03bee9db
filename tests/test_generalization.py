"""Domain generalization (jtl.dg): the DomainBed losses against numpy versions of their formulas and
finite differences, MixStyle, balanced batches, Group DRO / IRM / SWAD in the step, the selection
methods, and a DomainBed sweep through ``jtl sweep`` and ``jtl collect --domainbed``."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.losses import generalization as G
from loss_helpers import check_grad, jgrad, rand  # noqa: F401

@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- numpy references (the papers' formulas)
def np_ce(z, y):
    """Mean softmax cross-entropy, a loop over rows."""
    out = []
    for row, label in zip(np.asarray(z, np.float64), y):
        m = row.max()
        out.append(m + math.log(sum(math.exp(v - m) for v in row)) - row[label])
    return float(np.mean(out))


def np_risks(z, y):
    return np.array([np_ce(z[d], y[d]) for d in range(len(z))])


def np_scale_grad(z, y):
    """dCE(w z)/dw at w = 1: (1/n) sum_i z_i . (softmax(z_i) - onehot(y_i))."""
    total = 0.0
    for row, label in zip(z, y):
        p = np.exp(row - row.max())
        p /= p.sum()
        onehot = np.eye(len(row))[label]
        total += float(row @ (p - onehot))
    return total / len(z)


def np_irm(z, y):
    return float(np.mean([np_scale_grad(z[d][0::2], y[d][0::2]) * np_scale_grad(z[d][1::2], y[d][1::2])
                          for d in range(len(z))]))


def np_coral(x, y):
    mx, my = x.mean(0), y.mean(0)
    cx = sum(np.outer(r - mx, r - mx) for r in x) / (len(x) - 1)
    cy = sum(np.outer(r - my, r - my) for r in y) / (len(y) - 1)
    return float(np.mean((mx - my) ** 2) + np.mean((cx - cy) ** 2))


def np_mmd(x, y, gammas=(0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)):
    k = lambda a, b: sum(math.exp(-g * float(np.sum((a - b) ** 2))) for g in gammas)
    mean_k = lambda A, B: np.mean([[k(a, b) for b in B] for a in A])
    return float(mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def _batch(seed=0, d=3, b=6, k=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, b, k)), rng.integers(0, k, (d, b))


# ---------------------------------------------------------------- losses
def test_irm_penalty_matches_numpy_and_finite_differences(x64):
    z, y = _batch(1)
    # the numpy scale gradient itself against a central difference of the risk in the scale w
    h = 1e-6
    fd = (np_ce(z[0] * (1 + h), y[0]) - np_ce(z[0] * (1 - h), y[0])) / (2 * h)
    assert abs(fd - np_scale_grad(z[0], y[0])) < 1e-7
    np.testing.assert_allclose(float(jax.jit(G.irm_penalty)(z, y)), np_irm(z, y), rtol=1e-10)
    check_grad(lambda a: G.irm_penalty(a, jnp.asarray(y)), lambda a: np_irm(a, y), z, rtol=1e-5, atol=1e-8)


def test_vrex_penalty_and_domain_risks(x64):
    z, y = _batch(2)
    np.testing.assert_allclose(np.asarray(jax.jit(G.domain_risks)(z, y)), np_risks(z, y), rtol=1e-12)
    np_vrex = lambda a: float(np.var(np_risks(a, y)))  # population variance: (1/D) sum (R_d - mean)^2
    np.testing.assert_allclose(float(jax.jit(lambda a: G.vrex_penalty(G.domain_risks(a, y)))(z)), np_vrex(z),
                               rtol=1e-10)
    check_grad(lambda a: G.vrex_penalty(G.domain_risks(a, jnp.asarray(y))), np_vrex, z, rtol=1e-5, atol=1e-9)


def test_annealed_weight_switches_at_the_anneal_step():
    w = [float(G.annealed_weight(jnp.asarray(s), 100.0, 3)) for s in range(6)]
    assert w == [1.0, 1.0, 1.0, 100.0, 100.0, 100.0]


def test_groupdro_weights_and_loss(x64):
    z, y = _batch(3)
    q0, eta = np.array([0.2, 0.5, 0.3]), 0.7
    r = np_risks(z, y)
    q_np = np.array([q0[d] * math.exp(eta * r[d]) for d in range(3)])
    q_np /= q_np.sum()
    q = np.asarray(jax.jit(lambda a: G.groupdro_weights(q0, G.domain_risks(a, y), eta))(z))
    np.testing.assert_allclose(q, q_np, rtol=1e-12)
    loss = lambda a: G.groupdro_loss(G.domain_risks(a, jnp.asarray(y)),
                                     G.groupdro_weights(q0, G.domain_risks(a, jnp.asarray(y)), eta))
    np.testing.assert_allclose(float(jax.jit(loss)(z)), float(q_np @ r), rtol=1e-12)
    # q is held constant in the gradient: the numpy version freezes it at the base point
    check_grad(loss, lambda a: float(q_np @ np_risks(a, y)), z, rtol=1e-6)


@pytest.mark.parametrize("kind,np_pair", [("coral", np_coral), ("mmd", np_mmd)])
def test_pairwise_domain_distances(kind, np_pair, x64):
    f = rand(3, 5, 4, seed=4, scale=0.3)
    np_fn = lambda a: float(np.mean([np_pair(a[i], a[j]) for i, j in ((0, 1), (0, 2), (1, 2))]))
    np.testing.assert_allclose(float(jax.jit(lambda a: G.pairwise_domain_distance(a, kind))(f)), np_fn(f),
                               rtol=1e-9)
    check_grad(lambda a: G.pairwise_domain_distance(a, kind), np_fn, f, rtol=1e-5, atol=1e-9)
    assert float(G.pairwise_domain_distance(f[:1], kind)) == 0.0  # one domain: no pair


# ---------------------------------------------------------------- MixStyle
def _stats(x):
    return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2)) + 1e-6)


@pytest.mark.parametrize("mode", ["random", "crossdomain"])
def test_mixstyle_mixes_each_samples_statistics_with_another_samples(mode):
    """Each output sample's per-channel mean and std are l*(own) + (1-l)*(another sample's), one l per
    sample for all channels, and the other samples form a permutation (Zhou et al. 2021, eq. 4-5)."""
    from jtl.models.resnet import mixstyle

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 4, 4, 3)) * rng.uniform(0.5, 3, (8, 1, 1, 3)) + rng.standard_normal((8, 1, 1, 3)))
    mix = jax.jit(lambda a, p: mixstyle(a, jax.random.key(0), p=p, alpha=2.0, mode=mode))
    y = np.asarray(mix(jnp.asarray(x, jnp.float32), 1.0), np.float64)
    mu, sig = _stats(x)
    mu_y, sig_y = y.mean(axis=(1, 2)), y.std(axis=(1, 2))
    partners = []
    for i in range(len(x)):
        found = None
        for j in range(len(x)):
            lam = (mu_y[i, 0] - mu[j, 0]) / (mu[i, 0] - mu[j, 0]) if j != i else None
            if lam is None or not -1e-4 <= lam <= 1 + 1e-4:
                continue
            if (np.allclose(mu_y[i], lam * mu[i] + (1 - lam) * mu[j], atol=1e-3)
                    and np.allclose(sig_y[i], lam * sig[i] + (1 - lam) * sig[j], atol=1e-3)):
                found = j
        if found is None:  # mixed with itself (perm[i] = i): unchanged statistics
            assert np.allclose(y[i], x[i], atol=1e-4)
            found = i
        partners.append(found)
    assert sorted(partners) == list(range(len(x)))
    if mode == "crossdomain":  # the two halves swap
        assert all((j >= 4) == (i < 4) for i, j in enumerate(partners))
    x32 = jnp.asarray(x, jnp.float32)
    np.testing.assert_array_equal(np.asarray(mix(x32, 0.0)), np.asarray(x32))


def test_mixstyle_resnet_option_trains_differently_and_evaluates_the_same():
    from jtl.models import create_model

    x = jnp.asarray(np.random.default_rng(6).standard_normal((8, 4, 4, 1)), jnp.float32)
    plain = create_model("cifar_resnet8", 10)
    mixed = create_model("cifar_resnet8", 10, mixstyle=("layer1",), mixstyle_p=1.0)
    v = jax.jit(plain.init)(jax.random.key(0), x)
    assert jax.tree.structure(v) == jax.tree.structure(jax.eval_shape(mixed.init, jax.random.key(0), x))
    rngs = {"dropout": jax.random.key(1)}

    train = lambda m: jax.jit(lambda x: m.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)[0])(x)
    assert not np.allclose(np.asarray(train(plain)), np.asarray(train(mixed)))
    # eval mode never mixes: the same function as the plain network (same jaxpr)
    assert str(jax.make_jaxpr(lambda x: mixed.apply(v, x))(x)) == str(jax.make_jaxpr(lambda x: plain.apply(v, x))(x))


# ---------------------------------------------------------------- the DG task and its step
DOMAINS = tuple(f"digits:angle@{a}" for a in (0, 30, 60))


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def dg_config(**overrides):
    from jtl.config import resolve
    from train_helpers import with_overrides

    base = {
        "model": {"name": "cifar_resnet8", "num_classes": 10},
        "data": {"eval": (), "image_size": 8, "channels": 1, "normalize": "dataset", "augment": (), "val_fraction": 0.2},
        "dg": {"domains": DOMAINS, "names": ("0", "30", "60"), "test": (2,)},
        "batch_size": 8, "eval_batch_size": 64, "total_steps": 4, "eval_every": 2, "checkpoint_every": 0,
        "log_every": 1, "progress": False,
        "optim": {"name": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0},
    }
    return resolve(with_overrides(base, overrides))


ETA, LAM = 0.5, 7.0


@pytest.fixture(scope="module")
def step_task(tmp_path_factory):
    """One DG task for the step tests: Group DRO + IRM (anneal at update 2) + SWAD sums."""
    from jtl.dg.task import DGTask
    from jtl.train.steps import make_mesh

    mp = pytest.MonkeyPatch()
    mp.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
    cfg = dg_config(**{"loss": {"groupdro": 1.0, "irm": 1.0}, "loss_options.groupdro.eta": ETA,
                       "loss_options.irm.weight": LAM, "loss_options.irm.anneal_steps": 2, "dg.swad": True,
                       "save_predictions": True})
    yield cfg, DGTask(cfg, make_mesh())
    mp.undo()


def test_balanced_batches_are_domain_major_disjoint_and_resumable(step_task):
    _, task = step_task
    start = task.train_iterator.get_state()
    b = next(task.train_iterator)
    np.testing.assert_array_equal(b["domain"], [0] * 4 + [1] * 4)  # 8 / 2 source domains
    # each source domain holds its own share of the base images (i % 3 == its position)
    positions = [np.unique(task._train_source(i).index % 3) for i in task.train_ids]
    assert [p.tolist() for p in positions] == [[0], [1]]
    state = task.train_iterator.get_state()
    ahead = [next(task.train_iterator) for _ in range(2)]
    task.train_iterator.set_state(state)
    again = [next(task.train_iterator) for _ in range(2)]
    for x, y in zip(ahead, again):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert set(task.eval_iterators) == {"val_0", "val_30", "val_60", "test_60"}
    task.train_iterator.set_state(start)


def test_groupdro_irm_swad_in_the_step(step_task):
    """Four updates of Group DRO + IRM (anneal at update 2) + SWAD sums: q after the first update is
    the numpy exponentiated-gradient update of the first batch's risks; the penalty weight jumps at
    the anneal step and the optimizer restarts there (Adam counts 2 updates after 4); SWAD's segment
    sums average exactly the iterates of an uninterrupted loop."""
    from jtl.dg import swad
    from jtl.train.steps import build_step

    cfg, task = step_task
    eta, lam = ETA, LAM
    step = jax.jit(build_step(task, cfg))
    state, iterates, metrics = task.state, [], []
    for i in range(4):
        batch = task.prepare(next(task.train_iterator))
        if i == 0:  # the numpy q-update from this batch's per-domain risks at the initial parameters
            out, _ = task.forward(state.variables, {k: jnp.asarray(v) for k, v in batch.items()}, True,
                                  jax.random.key(0))
            z = np.asarray(out["logits"], np.float64).reshape(2, 4, -1)
            r = np_risks(z, np.asarray(batch["label"]).reshape(2, 4))
            q1 = 0.5 * np.exp(eta * r)
            q1 /= q1.sum()
        state, m = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
        if i == 0:
            np.testing.assert_allclose(np.asarray(state.opt_state["groupdro_q"]), q1, rtol=1e-5)
        iterates.append(jax.tree.map(np.asarray, state.params))
        metrics.append({k: float(v) for k, v in m.items()})
    for i, m in enumerate(metrics):  # the penalty's weight: 1 before update 2, lambda from then on
        np.testing.assert_allclose(m["loss/irm"], (lam if i >= 2 else 1.0) * m["irm/penalty"], rtol=1e-5)
    adam_counts = [int(x) for x in jax.tree.leaves(state.opt_state["optimizer"]) if np.ndim(x) == 0]
    assert adam_counts and set(adam_counts) == {2}  # reset before update 2: only updates 2 and 3 counted
    sums = jax.device_get(state.opt_state["swad"])
    np.testing.assert_array_equal(np.asarray(sums["counts"]), [2.0, 2.0])
    for (a, b) in ((0, 0), (1, 1), (0, 1)):
        want = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *iterates[2 * a: 2 * b + 2])
        got = swad.average(sums, a, b)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_batch_statistics_are_the_batchs_mean_and_unbiased_variance():
    from jtl.dg.swad import batch_statistics
    from jtl.models.layers import BatchNorm

    bn = BatchNorm()
    x = np.random.default_rng(7).standard_normal((6, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -2.0]
    v = bn.init(jax.random.key(0), jnp.asarray(x, jnp.float32))

    def forward(variables, batch, train, key):
        _, upd = bn.apply(variables, batch, mutable=["batch_stats"])
        return None, upd["batch_stats"]

    got = batch_statistics(forward, {"params": v["params"], "batch_stats": v["batch_stats"]},
                           jnp.asarray(x, jnp.float32), None)
    np.testing.assert_allclose(np.asarray(got["mean"]), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["var"]), x.var(0, ddof=1), rtol=1e-5)


def test_swad_window():
    from jtl.dg.swad import select_window

    # falls to its lowest at evaluation 3, stays near it, then overfits from evaluation 7 on
    losses = [2.0, 1.5, 1.2, 1.0, 1.05, 1.02, 1.1, 2.0, 2.2, 2.4, 2.5]
    start, end = select_window(losses, n_converge=3, n_tolerance=2, tolerance_ratio=0.3)
    assert start == 3  # 1.0 <= 1.05, 1.02: the loss stopped falling
    threshold = 1.3 * np.mean([1.0, 1.05, 1.02])
    assert end == 6 and losses[6] <= threshold < min(losses[7:9])
    assert select_window([3.0, 2.0, 1.0, 0.5]) == (3, 3)  # never stopped falling: from the lowest


def test_dg_bad_configs_are_one_line_errors():
    from jtl.errors import ConfigError

    from jtl.dg.task import check_dg

    for kw, msg in [({"dg.test": (3,)}, "dg.test"), ({"batch_size": 9}, "multiple of the 2 source domains"),
                    ({"dg.test": (0, 1, 2)}, "nothing is left"), ({"data.val_fraction": 0.0}, "val_fraction"),
                    ({"dg.swad": True}, "save_predictions")]:
        with pytest.raises(ConfigError, match=msg) as e:
            check_dg(dg_config(**kw))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- selection
def _run(algorithm, test, h, seed, records, names=("a", "b", "c")):
    from jtl.dg.selection import DGRun

    return DGRun(None, algorithm, test, h, seed, names, records)


def test_selection_methods_on_hand_made_records():
    """Held-out domain c (index 2): two draws x two evaluations; LODO runs hold out (c, a) and (c, b)."""
    from jtl.dg.selection import select

    r = lambda va, vb, vc, tc: {"val_a": va, "val_b": vb, "val_c": vc, "test_c": tc}
    runs = [
        _run("erm", (2,), 0, 0, [(10, r(.5, .5, .9, .70)), (20, r(.8, .6, .1, .60))]),  # train-val 0.7 at step 20
        _run("erm", (2,), 1, 0, [(10, r(.6, .7, .2, .80)), (20, r(.6, .6, .5, .75))]),  # 0.65 at 10; oracle .5
        # LODO: draw 0 scores (0.3 + 0.5) / 2 = 0.4 at step 10; draw 1 scores 0.9 at step 20
        _run("erm", (2, 0), 0, 0, [(10, {"test_a": .3}), (20, {"test_a": .2})]),
        _run("erm", (2, 1), 0, 0, [(10, {"test_b": .5}), (20, {"test_b": .2})]),
        _run("erm", (2, 0), 1, 0, [(10, {"test_a": .1}), (20, {"test_a": .9})]),
        _run("erm", (1, 2), 1, 0, [(10, {"test_b": .1}), (20, {"test_b": .9})]),
    ]
    assert select(runs, "train_val", "erm", 2, 0) == .60  # draw 0, step 20 (0.7 beats 0.65)
    assert select(runs, "oracle", "erm", 2, 0) == .75  # last evaluations: val_c 0.1 vs 0.5 -> draw 1
    assert select(runs, "lodo", "erm", 2, 0) == .75  # draw 1 at step 20
    assert select(runs[:2], "lodo", "erm", 2, 0) is None  # without the LODO runs: no answer
    assert select(runs, "train_val", "erm", 2, 1) is None  # no run of seed 1


def test_domainbed_table_mean_and_std_over_seeds():
    from jtl.dg.selection import render_markdown, tables

    val = {f"val_{n}": .5 for n in "abc"}
    runs = [_run(alg, (t,), 0, s, [(1, {**val, f"test_{'abc'[t]}": acc})])
            for alg, t, s, acc in [("erm", 0, 0, .90), ("erm", 0, 1, .80), ("erm", 2, 0, .70), ("erm", 2, 1, .60),
                                   ("irm", 0, 0, .50), ("irm", 0, 1, .50)]]
    (table,) = tables(runs, ("train_val",))
    text = render_markdown(table)
    std = np.std([90, 80], ddof=1)
    assert f"| erm | 85.0 ± {std:.1f} | 65.0 ± {std:.1f} | 75.0 |" in text
    assert "| irm | 50.0 ± 0.0 | X | X |" in text
    assert "| Algorithm | a | c | Avg |" in text and "Training-domain validation" in text


@pytest.mark.parametrize("other,n_hparams,seeds", [
    pytest.param("swad", 1, "0", id="erm_swad"),
    pytest.param("coral", 3, "0+1", id="domainbed_2x3x2", marks=pytest.mark.slow),
])
def test_dg_sweep_and_domainbed_table(other, n_hparams, seeds, tmp_path):
    """``jtl sweep`` of ERM and another algorithm (x n_hparams draws x seeds) on rotated digits, then
    ``jtl collect --domainbed``: its training-domain-validation cells are recomputed here from the
    runs' metrics.jsonl files (SWAD: its averaged model's accuracy in summary.json)."""
    from train_helpers import run_jtl

    arg = (f"sweep,algorithms=erm+{other},n_hparams={n_hparams},seeds={seeds},tests=5,steps=6,eval_every=2,"
           "per_domain=4,size=8,test_limit=100,base=digits")
    rc, out, err = run_jtl("sweep", "--config", f"configs/dg_rotated_fmnist.py:{arg}", "--workdir", tmp_path / "sw")
    assert rc == 0, err[-3000:]
    rc, out, err = run_jtl("collect", "--domainbed", tmp_path / "sw")
    assert rc == 0, err[-3000:]
    # the independent recomputation: per run, the best mean source-val accuracy over its evaluations
    best, runs = {}, []
    for cfg_file in (tmp_path / "sw").rglob("config.json"):
        cfg = json.loads(cfg_file.read_text())
        runs.append((cfg["dg"]["hparams_seed"], cfg, cfg_file.parent))
    for _, cfg, wd in sorted(runs, key=lambda r: r[0]):  # ties: the first draw, the first evaluation
        for row in [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]:
            if "val_0/top1" not in row:
                continue
            score = np.mean([row[f"val_{a}/top1"] for a in (0, 15, 30, 45, 60)])
            key = (cfg["dg"]["algorithm"], cfg["seed"])
            if cfg["dg"]["swad"]:  # one record: the averaged model
                swad = json.loads((wd / "summary.json").read_text())["swad"]
                assert swad["eval_steps"] == [2, 4, 6] and 1 <= swad["window_steps"][0] <= swad["window_steps"][1]
                best[key] = (0.0, swad["final"]["test_75"]["top1"])
            elif key not in best or score > best[key][0]:
                best[key] = (score, row["test_75/top1"])
    assert len({k for k in best}) == 2 * len(seeds.split("+"))
    assert len(list((tmp_path / "sw").rglob("summary.json"))) == 2 * n_hparams * len(seeds.split("+"))
    for algorithm in ("erm", other):
        accs = [best[(algorithm, int(s))][1] * 100 for s in seeds.split("+")]
        cell = f"{np.mean(accs):.1f}" + (f" ± {np.std(accs, ddof=1):.1f}" if len(accs) > 1 else "")
        line = next(x for x in out.splitlines() if x.startswith(f"| {algorithm} |"))
        assert line == f"| {algorithm} | {cell} | {np.mean(accs):.1f} |", (line, out)
    assert "Test-domain validation (oracle" in out


def test_cli_refuses_bad_dg_arguments_in_one_line(tmp_path):
    from train_helpers import one_line_error, run_jtl

    one_line_error(run_jtl("train", "--config", "configs/dg_rotated_fmnist.py:erm,test=9", "--workdir",
                           tmp_path / "a"), "dg.test", "0..5")
    one_line_error(run_jtl("train", "--config", "configs/dg_rotated_fmnist.py:dann", "--workdir", tmp_path / "b"),
                   "unknown domain-generalization algorithm 'dann'")
    one_line_error(run_jtl("sweep", "--config", "configs/dg_rotated_fmnist.py:sweep,algorithms=erm+foo",
                           "--workdir", tmp_path / "c"), "'foo'")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("summary.json"))
