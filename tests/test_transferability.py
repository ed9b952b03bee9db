"""Transferability scores against numpy references written from the papers, and ``jtl rank``.

The references below follow each paper's formula literally (dense matrices, explicit loops
over classes), not the library's route (SVD, scatter-adds): LogME's evidence is evaluated
with a dense A = alpha I + beta F^T F, its fixed point checked by MacKay's equations and by
the evidence's vanishing derivative in (log alpha, log beta).
"""

import json
import math

import numpy as np
import pytest

from jtl.analysis import transferability as tr
from jtl.errors import ConfigError, DataError
from train_helpers import one_line_error, run_jtl, tiny_config

RNG = np.random.default_rng(0)


def random_task(n=120, d=12, k=4, z=6, seed=0):
    """Features that carry the labels partly, labels, and source logits."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d))
    f = centres[y] * 0.8 + rng.normal(size=(n, d))
    logits = f @ rng.normal(size=(d, z)) + rng.normal(size=(n, z))
    return f, y, logits


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------ numpy references


def ref_log_evidence(f, y, alpha, beta):
    """You et al. 2021, Eq. (2)-(3): log p(y | F, alpha, beta), dense A."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)


def ref_marginal_likelihood(f, y, alpha, beta):
    """The same evidence as a Gaussian marginal: y ~ N(0, I / beta + F F^T / alpha) (n x n)."""
    c = np.eye(len(y)) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(c)
    return -0.5 * y @ np.linalg.solve(c, y) - 0.5 * logdet - len(y) / 2 * math.log(2 * math.pi)


def ref_leep(theta, y):
    """Nguyen et al. 2020, Eq. (1)-(2), one loop per (y, z)."""
    n, nz = theta.shape
    ky = y.max() + 1
    joint = np.array([[sum(theta[i, z] for i in range(n) if y[i] == yy) / n for z in range(nz)] for yy in range(ky)])
    cond = joint / joint.sum(axis=0)
    return np.mean([math.log(sum(cond[y[i], z] * theta[i, z] for z in range(nz))) for i in range(n)])


def ref_nce(z, y):
    """Tran et al. 2019, Eq. (3): -H(Y|Z) = sum_{z,y} P(z,y) log P(y|z), by counting."""
    n, total = len(y), 0.0
    for zz in set(z.tolist()):
        nz = np.sum(z == zz)
        for yy in set(y.tolist()):
            c = np.sum((z == zz) & (y == yy))
            if c:
                total += c / n * math.log(c / nz)
    return total


def ref_h_score(f, y):
    """Bao et al. 2019, Eq. (2): tr(cov(f)^-1 cov(E[f|y])), class means by a loop."""
    mu = f.mean(axis=0)
    cov_f = np.cov(f.T, bias=True)
    cov_g = sum(np.sum(y == c) / len(y) * np.outer(f[y == c].mean(0) - mu, f[y == c].mean(0) - mu)
                for c in np.unique(y))
    return np.trace(np.linalg.solve(cov_f, cov_g))


def ref_transrate(f, y, eps):
    """Huang et al. 2022, Eq. (3)-(5): R(Z) - sum_y n_y/n R(Z_y), eigenvalues of Z^T Z."""
    z = f - f.mean(axis=0)
    n, d = z.shape

    def rate(zz):
        lam = np.linalg.eigvalsh(zz.T @ zz)
        return 0.5 * np.sum(np.log1p(d / (len(zz) * eps**2) * lam))

    return rate(z) - sum(np.sum(y == c) / n * rate(z[y == c]) for c in np.unique(y))


# ------------------------------------------------------------------------------------ LogME


@pytest.mark.parametrize("n,d", [(80, 10), (25, 30)])  # more examples than features, and fewer
def test_logme_fixed_point_and_evidence(n, d):
    f, y, _ = random_task(n=n, d=d, k=3, seed=0)
    onehot = np.eye(3)[y]
    ev, alphas, betas = tr.logme_evidence(f, onehot)
    lam = np.linalg.eigvalsh(f.T @ f)
    for k in range(3):
        a, b = alphas[k], betas[k]
        # the evidence at the returned (alpha, beta), evaluated densely
        assert ev[k] == pytest.approx(ref_log_evidence(f, onehot[:, k], a, b) / n, rel=1e-9, abs=1e-12)
        assert ev[k] == pytest.approx(ref_marginal_likelihood(f, onehot[:, k], a, b) / n, rel=1e-9)
        # MacKay's fixed point: alpha = gamma / m^T m, beta = (n - gamma) / ||F m - y||^2
        m = b * np.linalg.solve(a * np.eye(d) + b * f.T @ f, f.T @ onehot[:, k])
        gamma = np.sum(b * lam / (a + b * lam))
        assert a == pytest.approx(gamma / (m @ m), rel=1e-7)
        assert b == pytest.approx((n - gamma) / np.sum((f @ m - onehot[:, k]) ** 2), rel=1e-7)
        # ... which is a stationary point (here: the maximum) of the evidence in (log alpha, log beta)
        h = 1e-4
        for da, db in [(h, 0), (0, h)]:
            up = ref_log_evidence(f, onehot[:, k], a * math.exp(da), b * math.exp(db))
            down = ref_log_evidence(f, onehot[:, k], a * math.exp(-da), b * math.exp(-db))
            centre = ref_log_evidence(f, onehot[:, k], a, b)
            assert abs(up - down) / (2 * h) < 1e-4 * n
            assert up < centre and down < centre
    assert tr.logme(f, y) == pytest.approx(np.mean(ev), rel=1e-12)


def test_logme_interpolating_labels_end_at_the_beta_bound():
    """15 examples, 30 features: the labels are fitted exactly and the evidence rises towards
    beta -> infinity; beta stops at 1e12 and the evidence there is finite and evaluated right."""
    f, y, _ = random_task(n=15, d=30, k=3, seed=2)
    onehot = np.eye(3)[y]
    ev, alphas, betas = tr.logme_evidence(f, onehot)
    assert np.all(np.isfinite(ev)) and betas.max() == 1e12
    k = int(np.argmax(betas))
    assert ev[k] == pytest.approx(ref_marginal_likelihood(f, onehot[:, k], alphas[k], betas[k]) / 15, rel=1e-9)
    # the limit: beta 100x smaller gives less evidence, and the gain left is below 1e-6
    lower = ref_marginal_likelihood(f, onehot[:, k], alphas[k], 1e10)
    assert lower < 15 * ev[k] < lower + 1e-6


def test_logme_prefers_informative_features():
    f, y, _ = random_task(n=200, d=8, k=4, seed=3)
    noise = np.random.default_rng(4).normal(size=f.shape)
    assert tr.logme(f, y) > tr.logme(noise, y)


# ------------------------------------------------------------------------ LEEP, NCE, H, TrR


@pytest.mark.parametrize("seed", [0, 1])
def test_leep_nce_hscore_transrate_equal_references(seed):
    f, y, logits = random_task(seed=seed)
    theta = softmax(logits)
    assert tr.leep(theta, y) == pytest.approx(ref_leep(theta, y), rel=1e-10)
    z = logits.argmax(axis=1)
    assert tr.nce(z, y) == pytest.approx(ref_nce(z, y), rel=1e-10)
    assert tr.h_score(f, y) == pytest.approx(ref_h_score(f, y), rel=1e-8)
    for eps in (0.1, 1.0):
        assert tr.transrate(f, y, eps=eps) == pytest.approx(ref_transrate(f, y, eps), rel=1e-8)
    # score() feeds LEEP softmax(logits) and NCE argmax(logits)
    assert tr.score("leep", features=f, logits=logits, labels=y) == pytest.approx(ref_leep(theta, y), rel=1e-10)
    assert tr.score("nce", features=f, logits=logits, labels=y) == pytest.approx(ref_nce(z, y), rel=1e-10)


def test_scores_bounds_on_extreme_tasks():
    """Labels that the source classes determine: NCE = 0 and LEEP = 0. Features that are a
    function of the label (E[f|y] = f): H-score = tr(I) = their width (here classes - 1)."""
    y = np.repeat(np.arange(3), 10)
    assert tr.nce(y + 2, y) == pytest.approx(0.0, abs=1e-12)
    assert tr.leep(np.eye(3)[y], y) == pytest.approx(0.0, abs=1e-12)
    assert tr.h_score(np.eye(3)[y][:, :2], y) == pytest.approx(2.0, rel=1e-9)


def test_bad_inputs_are_one_line_errors():
    f, y, logits = random_task()
    with pytest.raises(DataError, match="labels"):
        tr.logme(f, y[:-1])
    with pytest.raises(DataError, match="NaN"):
        tr.h_score(np.full_like(f, np.nan), y)
    with pytest.raises(DataError, match="softmax"):
        tr.leep(logits, y)
    with pytest.raises(DataError, match="integers"):
        tr.nce(y.astype(float), y)
    with pytest.raises(ConfigError, match="unknown transferability score"):
        tr.score("fid", features=f, logits=logits, labels=y)


# --------------------------------------------------------------------------------- jtl rank


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny digits runs: 30 steps of training and 1 step (nearly the random init)."""
    from jtl.train import train

    root = tmp_path_factory.mktemp("rank")
    train(tiny_config(total_steps=30, **{"data.eval": ()}), root / "trained")
    train(tiny_config(total_steps=1, **{"data.eval": ()}), root / "untrained")
    return root


def test_rank_command_scores_equal_the_functions_on_the_runs_outputs(two_runs, tmp_path):
    from jtl import data as jdata
    from jtl.analysis.rank import run_outputs
    from jtl.train.inference import RunModel

    runs = [two_runs / "untrained", two_runs / "trained"]
    out = tmp_path / "rank.json"
    rc, stdout, err = run_jtl("rank", "--dataset", "digits", "--split", "val", "--limit", "0", "--models", *runs,
                              "--out", out)
    assert rc == 0, err
    rows = json.loads(out.read_text())
    src = jdata.load("digits", "val", seed=0)
    assert sorted(r["model"] for r in rows) == sorted(map(str, runs))
    assert rows[0]["logme"] >= rows[1]["logme"]  # best LogME first
    images = np.stack([src[i]["image"] for i in range(len(src))])
    for r in rows:
        features, logits = run_outputs(r["model"], src)
        assert features.shape == (len(src), 64)
        if r["model"] == str(two_runs / "trained"):  # the logits are those of jtl eval's model of the run
            np.testing.assert_allclose(logits, RunModel(r["model"]).logits(images), rtol=1e-4, atol=1e-4)
        assert r["logme"] == pytest.approx(tr.logme(features, src.labels), rel=1e-9)
        assert r["leep"] == pytest.approx(ref_leep(softmax(logits), src.labels), rel=1e-6)
        assert r["h_score"] == pytest.approx(tr.h_score(features, src.labels), rel=1e-9)
    by = {r["model"]: r for r in rows}
    # 30 steps of training on the same labels separate the classes better than the random init
    assert by[str(two_runs / "trained")]["logme"] > by[str(two_runs / "untrained")]["logme"]
    assert by[str(two_runs / "trained")]["leep"] > by[str(two_runs / "untrained")]["leep"]
    assert "ranked by logme" in stdout


def test_rank_command_bad_input(two_runs, tmp_path):
    one_line_error(run_jtl("rank", "--dataset", "digits", "--models", tmp_path), "not a jtl run directory")
    one_line_error(run_jtl("rank", "--dataset", "digits", "--models", two_runs / "trained", "--scores", "logme,fid"),
                   "--scores")
    out = tmp_path / "keep.md"
    out.write_text("old\n")
    one_line_error(run_jtl("rank", "--dataset", "no_such_set", "--models", two_runs / "trained", "--out", out))
    assert out.read_text() == "old\n"  # nothing written on failure
