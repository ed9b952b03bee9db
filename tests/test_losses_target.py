"""jtl.losses, part 2: WDGRL, MCD, BSP, BNM, AFN, MCC, entropy, IM, pseudo-labels, CE, jit.

Same method as tests/test_losses.py: independent float64 numpy implementations written
from each paper's formula, and central finite differences for the gradients.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtl.losses as L
from loss_helpers import J, check_grad, jgrad, np_softmax, rand, x64  # noqa: F401 (x64: autouse fixture)


def np_entropy_vec(p):
    return -sum(pc * math.log(pc) for pc in p if pc > 0)


def test_wdgrl_critic():
    cs, ct = rand(6, 1, seed=1), rand(5, 1, seed=2)
    expected = sum(cs[:, 0]) / 6 - sum(ct[:, 0]) / 5
    assert float(J.wdgrl_critic(cs, ct)) == pytest.approx(expected, rel=1e-12)
    check_grad(lambda a: L.wdgrl_critic(a, ct), lambda a: a.sum() / 6 - ct.sum() / 5, cs)


def np_gradient_penalty(a, v, fs, ft, eps):
    """Critic c(x) = v . tanh(A^T x); grad_x c = A ((1 - tanh^2(A^T x)) * v)."""
    total = 0.0
    for i in range(len(fs)):
        x = eps[i] * fs[i] + (1 - eps[i]) * ft[i]
        u = np.tanh(a.T @ x)
        grad = a @ ((1 - u**2) * v)
        total += (math.sqrt(float(np.sum(grad**2))) - 1.0) ** 2
    return total / len(fs)


def test_gradient_penalty_matches_numpy_and_gradient():
    fs, ft = rand(5, 3, seed=3), rand(5, 3, seed=4) + 1.0
    a, v = rand(3, 4, seed=5), rand(4, seed=6)
    key = jax.random.key(7)
    # interpolation weights as documented: jax.random.uniform(key, (B, 1))
    eps = np.asarray(jax.random.uniform(key, (5, 1), dtype=jnp.float64))[:, 0]

    def gp(a_, fs_=fs):
        return L.gradient_penalty(lambda x: jnp.tanh(x @ a_) @ v, fs_, ft, key)

    expected = np_gradient_penalty(a, v, fs, ft, eps)
    assert float(jax.jit(gp)(a)) == pytest.approx(expected, rel=1e-10)
    # the penalty trains the critic (a closure over its parameters) ...
    check_grad(gp, lambda a_: np_gradient_penalty(a_, v, fs, ft, eps), a)
    # ... and not the features
    np.testing.assert_array_equal(np.asarray(jgrad(lambda f: gp(a, f))(fs)), 0.0)


def test_gradient_penalty_linear_critic_and_zero_gradient():
    fs, ft = rand(4, 2, 3, seed=8), rand(4, 2, 3, seed=9)
    w = rand(6, seed=10)
    val = jax.jit(lambda f, g: L.gradient_penalty(lambda x: x.reshape(4, -1) @ w, f, g, jax.random.key(0)))(fs, ft)
    assert float(val) == pytest.approx((math.sqrt(np.sum(w**2)) - 1.0) ** 2, rel=1e-12)
    # a constant critic has zero input gradient: penalty 1, finite gradient w.r.t. its parameters
    const = jax.jit(jax.value_and_grad(
        lambda b: L.gradient_penalty(lambda x: b * jnp.ones(x.shape[0]), fs, ft, jax.random.key(0))))
    value, grad = const(2.0)
    assert float(value) == 1.0 and np.isfinite(float(grad))
    with pytest.raises(ValueError):
        L.gradient_penalty(lambda x: x.sum(-1), fs, ft[:3], jax.random.key(0))


# ---------------------------------------------------------------- MCD


def np_mcd(z1, z2):
    p1, p2 = np_softmax(z1), np_softmax(z2)
    b, c = p1.shape
    return sum(abs(p1[i, k] - p2[i, k]) for i in range(b) for k in range(c)) / (b * c)


def test_mcd_discrepancy():
    z1, z2 = rand(6, 5, seed=11, scale=2), rand(6, 5, seed=12, scale=2)
    assert float(J.mcd_discrepancy(z1, z2)) == pytest.approx(np_mcd(z1, z2), rel=1e-12)
    check_grad(lambda a: L.mcd_discrepancy(a, z2), lambda a: np_mcd(a, z2), z1)
    assert abs(float(J.mcd_discrepancy(z1, z1))) < 1e-15
    # maximal for confident, disagreeing classifiers: 2 / C
    e = 100.0 * np.eye(5)
    assert float(J.mcd_discrepancy(e, np.roll(e, 1, axis=1))) == pytest.approx(2 / 5, rel=1e-12)


# ---------------------------------------------------------------- BSP, BNM


def np_topk_sq_singular(x, k):
    # sigma_i^2 are the eigenvalues of X X^T
    eig = sorted(np.linalg.eigvalsh(x @ x.T), reverse=True)
    return float(sum(eig[:k]))


def test_bsp():
    fs, ft = rand(6, 4, seed=13), rand(5, 4, seed=14)
    for k in (1, 2):
        expected = np_topk_sq_singular(fs, k) + np_topk_sq_singular(ft, k)
        assert float(J.bsp(fs, ft, k=k)) == pytest.approx(expected, rel=1e-10)
        check_grad(lambda a: L.bsp(a, ft, k=k), lambda a: np_topk_sq_singular(a, k) + np_topk_sq_singular(ft, k), fs)
        check_grad(lambda a: L.bsp(fs, a, k=k), lambda a: np_topk_sq_singular(fs, k) + np_topk_sq_singular(a, k), ft)


def np_bnm(z):
    a = np_softmax(z)
    # nuclear norm = sum of singular values
    return -float(np.sum(np.linalg.svd(a, compute_uv=False))) / a.shape[0]


def bnm_range(b, c):
    return -math.sqrt(min(b, c) / b), -1.0 / math.sqrt(b * c)


def test_bnm_value_gradient_and_range():
    for b, c in ((6, 4), (3, 5)):
        z = rand(b, c, seed=15 + b, scale=2)
        assert float(J.bnm(z)) == pytest.approx(np_bnm(z), rel=1e-10)
        check_grad(L.bnm, np_bnm, z)
        lo, hi = bnm_range(b, c)
        assert lo <= float(J.bnm(z)) <= hi
        # uniform predictions: the upper end
        assert float(J.bnm(np.zeros((b, c)))) == pytest.approx(hi, rel=1e-10)
        # one-hot predictions spread evenly over the classes: the lower end
        onehot = 60.0 * np.eye(c)[np.arange(b) % c]
        if b % c == 0 or b < c:
            assert float(J.bnm(onehot)) == pytest.approx(lo, rel=1e-8)
        assert lo - 1e-9 <= float(J.bnm(onehot)) <= hi
    # all samples predicting one class: rank one, same value as uniform rows of norm 1 -> -1/sqrt(B)
    assert float(J.bnm(60.0 * np.eye(4)[np.zeros(6, int)])) == pytest.approx(-1 / math.sqrt(6), rel=1e-8)


# ---------------------------------------------------------------- AFN


def np_afn(f, delta, radius=None):
    norms = [math.sqrt(float(np.sum(row**2))) for row in f]
    radius = norms if radius is None else radius  # the detached norms
    return sum((r + delta - n) ** 2 for r, n in zip(radius, norms)) / len(f)


def test_afn_and_hafn():
    f = rand(5, 4, seed=20)
    for delta in (1.0, 0.3):
        assert float(J.afn(f, delta=delta)) == pytest.approx(delta**2, rel=1e-12)
        assert float(J.afn(f, delta=delta)) == pytest.approx(np_afn(f, delta), rel=1e-12)
        r0 = [math.sqrt(float(np.sum(row**2))) for row in f]
        g = check_grad(lambda a: L.afn(a, delta=delta), lambda a: np_afn(a, delta, r0), f)
        # descent enlarges every norm
        assert np.all(np.sum(g * f, axis=1) < 0)

    def np_hafn(x, r):
        return (sum(math.sqrt(float(np.sum(row**2))) for row in x) / len(x) - r) ** 2

    assert float(J.hafn(f, 25.0)) == pytest.approx(np_hafn(f, 25.0), rel=1e-12)
    check_grad(lambda a: L.hafn(a, 25.0), lambda a: np_hafn(a, 25.0), f)


# ---------------------------------------------------------------- MCC, entropy, IM


def np_mcc(z, t, weights=None):
    y = np_softmax(np.asarray(z) / t)
    b, c = y.shape
    if weights is None:
        h = [np_entropy_vec(row) for row in y]
        raw = [1 + math.exp(-hi) for hi in h]
        weights = [b * r / sum(raw) for r in raw]
    conf = np.zeros((c, c))
    for j in range(c):
        for k in range(c):
            conf[j, k] = sum(y[i, j] * weights[i] * y[i, k] for i in range(b))
    norm = np.zeros((c, c))
    for j in range(c):
        for k in range(c):
            norm[j, k] = conf[j, k] / sum(conf[l, k] for l in range(c))
    return sum(abs(norm[j, k]) for j in range(c) for k in range(c) if k != j) / c


def test_mcc_value_and_gradient():
    z = rand(7, 4, seed=21, scale=3)
    for t in (2.5, 1.0):
        assert float(J.mcc(z, temperature=t)) == pytest.approx(np_mcc(z, t), rel=1e-10)
    y = np_softmax(z / 2.5)
    raw = [1 + math.exp(-np_entropy_vec(r)) for r in y]
    w0 = [7 * r / sum(raw) for r in raw]  # the entropy weights are detached
    check_grad(lambda a: L.mcc(a), lambda a: np_mcc(a, 2.5, w0), z)


def test_mcc_range():
    c = 5
    for seed in range(3):
        assert 0.0 <= float(J.mcc(rand(8, c, seed=30 + seed, scale=4))) <= 1.0
    # confident predictions of distinct classes: ~0
    assert float(J.mcc(100.0 * np.eye(c))) == pytest.approx(0.0, abs=1e-12)
    # uniform predictions: (C - 1) / C
    assert float(J.mcc(np.zeros((8, c)))) == pytest.approx((c - 1) / c, rel=1e-12)
    # float32 one-hot logits where softmax underflows and some classes get no mass at all
    with jax.enable_x64(False):
        z = jnp.asarray(1e4 * np.eye(c)[[0, 0, 1, 1]], jnp.float32)
        val, g = jax.jit(jax.value_and_grad(L.mcc))(z)
        assert np.isfinite(float(val)) and 0.0 <= float(val) <= 1e-6
        assert np.all(np.isfinite(np.asarray(g)))


def np_mean_entropy(z):
    return sum(np_entropy_vec(p) for p in np_softmax(z)) / len(z)


def np_im(z):
    p = np_softmax(z)
    pbar = [sum(p[i, k] for i in range(len(p))) / len(p) for k in range(p.shape[1])]
    return np_mean_entropy(z) - np_entropy_vec(pbar)


def test_entropy_and_information_maximization():
    z = rand(6, 4, seed=40, scale=2)
    assert float(J.entropy(z)) == pytest.approx(np_mean_entropy(z), rel=1e-12)
    assert float(J.information_maximization(z)) == pytest.approx(np_im(z), rel=1e-10)
    check_grad(L.entropy, np_mean_entropy, z)
    check_grad(L.information_maximization, np_im, z)
    # ranges: uniform -> log C entropy, 0 IM; confident and diverse -> 0 entropy, -log C IM
    assert float(J.entropy(np.zeros((3, 4)))) == pytest.approx(math.log(4), rel=1e-12)
    assert float(J.information_maximization(np.zeros((3, 4)))) == pytest.approx(0.0, abs=1e-12)
    assert float(J.entropy(100.0 * np.eye(4))) == pytest.approx(0.0, abs=1e-12)
    assert float(J.information_maximization(100.0 * np.eye(4))) == pytest.approx(-math.log(4), rel=1e-12)
    with jax.enable_x64(False):  # saturated float32 logits: finite values and gradients
        z32 = jnp.asarray(1e4 * np.eye(4)[[0, 0, 1]], jnp.float32)
        for fn in (L.entropy, L.information_maximization):
            val, g = jax.jit(jax.value_and_grad(fn))(z32)
            assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------- pseudo-labels, CE


def np_pseudo_label(weak, strong, tau):
    q, p = np_softmax(weak), np_softmax(strong)
    total, kept = 0.0, 0
    for i in range(len(q)):
        if max(q[i]) >= tau:
            kept += 1
            total += -math.log(p[i, int(np.argmax(q[i]))])
    return total / len(q), kept / len(q)


def test_pseudo_label_loss():
    weak = rand(8, 3, seed=50, scale=3)
    strong = rand(8, 3, seed=51, scale=2)
    maxes = np_softmax(weak).max(axis=1)
    for tau in (0.0, float(np.median(maxes)), 0.95, 1.1):
        loss, rate = np_pseudo_label(weak, strong, tau)
        assert float(J.pseudo_label_loss(weak, strong, threshold=tau)) == pytest.approx(loss, rel=1e-12, abs=1e-15)
        got, aux = J.pseudo_label_loss_with_aux(weak, strong, threshold=tau)
        assert float(got) == pytest.approx(loss, rel=1e-12, abs=1e-15)
        assert float(aux["mask_rate"]) == pytest.approx(rate, abs=1e-15)
    assert 0.0 < np_pseudo_label(weak, strong, float(np.median(maxes)))[1] < 1.0  # the mask is not trivial
    tau = float(np.median(maxes))
    check_grad(lambda a: L.pseudo_label_loss(weak, a, threshold=tau),
               lambda a: np_pseudo_label(weak, a, tau)[0], strong)
    # weak predictions are detached
    gw = jgrad(lambda a: L.pseudo_label_loss(a, strong, threshold=tau))(weak)
    np.testing.assert_array_equal(np.asarray(gw), 0.0)


def np_ce(z, y, eps):
    p = np_softmax(z)
    b, c = p.shape
    total = 0.0
    for i in range(b):
        for k in range(c):
            q = (1 - eps) * (k == y[i]) + eps / c
            total += -q * math.log(p[i, k])
    return total / b


def test_cross_entropy():
    z, y = rand(6, 5, seed=60, scale=2), np.array([0, 4, 2, 2, 1, 3])
    for eps in (0.0, 0.1):
        assert float(J.cross_entropy(z, y, label_smoothing=eps)) == pytest.approx(np_ce(z, y, eps), rel=1e-12)
        check_grad(lambda a: L.cross_entropy(a, y, label_smoothing=eps), lambda a: np_ce(a, y, eps), z)
    # the smoothing may be traced (e.g. scheduled)
    val = jax.jit(lambda a, e: L.cross_entropy(a, y, label_smoothing=e))(z, 0.1)
    assert float(val) == pytest.approx(np_ce(z, y, 0.1), rel=1e-12)


# ---------------------------------------------------------------- jit, float32 and bfloat16 inputs


def _cases():
    r = np.random.default_rng(70)
    f = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    rf, rg = L.randomized_multilinear_matrices(jax.random.key(0), 4, 3, output_dim=8)
    return {
        "cross_entropy": (L.cross_entropy, (f(6, 3), np.array([0, 1, 2, 0, 1, 2]))),
        "dann": (L.dann, (f(6, 1), f(6, 1))),
        "cdan": (lambda a, b, p: L.cdan(a, b, L.entropy_weights(p), L.entropy_weights(p)),
                 (f(6), f(6), np.full((6, 3), 1 / 3, np.float32))),
        "multilinear_map": (lambda a, b: L.multilinear_map(a, b).sum(), (f(6, 4), f(6, 3))),
        "randomized_multilinear_map": (lambda a, b: L.randomized_multilinear_map(a, b, rf, rg).sum(),
                                       (f(6, 4), f(6, 3))),
        "grl": (lambda a: jnp.sum(L.grl(a, L.grl_coeff(0.3)), dtype=jnp.float32), (f(6, 4),)),
        "mk_mmd": (L.mk_mmd, (f(6, 4), f(6, 4))),
        "mk_mmd_linear": (functools.partial(L.mk_mmd, linear=True), (f(6, 4), f(6, 4))),
        "jmmd": (lambda a, b, c, d: L.jmmd([a, b], [c, d]), (f(6, 4), f(6, 3), f(6, 4), f(6, 3))),
        "coral": (L.coral, (f(6, 4), f(5, 4))),
        "mdd": (L.mdd, (f(11, 3), f(5, 3), f(6, 3))),
        "wdgrl_critic": (L.wdgrl_critic, (f(6, 1), f(6, 1))),
        # a linear critic, so that the value does not depend on the (dtype-dependent) random interpolates
        "gradient_penalty": (lambda a, b: L.gradient_penalty(lambda x: x @ jnp.arange(4.0), a, b, jax.random.key(1)),
                             (f(6, 4), f(6, 4))),
        "mcd_discrepancy": (L.mcd_discrepancy, (f(6, 3), f(6, 3))),
        "bsp": (L.bsp, (f(6, 4), f(6, 4))),
        "bnm": (L.bnm, (f(6, 3),)),
        "afn": (L.afn, (f(6, 4),)),
        "hafn": (lambda a: L.hafn(a, 3.0), (f(6, 4),)),
        "mcc": (L.mcc, (f(6, 3),)),
        "entropy": (L.entropy, (f(6, 3),)),
        "information_maximization": (L.information_maximization, (f(6, 3),)),
        "pseudo_label_loss": (functools.partial(L.pseudo_label_loss, threshold=0.5), (f(6, 3), f(6, 3))),
        "diversity": (L.diversity, (f(6, 3),)),
        "reliable_entropy": (functools.partial(L.reliable_entropy, e_margin=1.0), (f(6, 3),)),
        "eata_entropy": (functools.partial(L.eata_entropy, e_margin=1.0, d_margin=0.05),
                         (f(6, 3), np.full((3,), 1 / 3, np.float32))),
        "fisher_penalty": (L.fisher_penalty, (f(4, 3), f(4, 3), np.abs(f(4, 3)))),
        "nrc": (lambda z, fb, sb: L.nrc(z, np.arange(6), fb, sb, k=2, kk=2),
                (f(6, 3), f(10, 4) / 2, np.full((10, 3), 1 / 3, np.float32))),
    }


CASES = _cases()


def test_every_exported_loss_has_a_jit_case():
    # helpers, and selections that return masks, neighbours or labels rather than a loss
    helpers = {"grl_coeff", "entropy_weights", "randomized_multilinear_matrices", "pseudo_label_loss_with_aux",
               "unit_rows", "reliable_mask", "eata_selection", "nrc_neighbours", "shot_pseudo_labels"}
    assert set(L.__all__) - helpers <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_runs_under_jit_in_float32_and_bfloat16(name):
    """float32 under jit agrees with float64; bfloat16 inputs are computed in float32."""
    fn, args = CASES[name]
    args64 = [np.asarray(a, np.float64) if np.asarray(a).dtype == np.float32 else a for a in args]
    reference = float(jax.jit(fn)(*args64))
    with jax.enable_x64(False):
        jitted = jax.jit(fn)(*args)
        assert jitted.shape == () and jitted.dtype == jnp.float32
        np.testing.assert_allclose(float(jitted), reference, rtol=1e-4, atol=1e-5)
        # bfloat16 activations: computed in float32, finite
        bf = [jnp.asarray(a, jnp.bfloat16) if np.issubdtype(np.asarray(a).dtype, np.floating) else a for a in args]
        out = jax.jit(fn)(*bf)
        assert out.dtype == jnp.float32 and np.isfinite(float(out))
