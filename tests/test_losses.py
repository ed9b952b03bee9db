"""jtl.losses, part 1: gradient reversal, DANN/CDAN, MMD/JMMD, CORAL, MDD.

Every loss is compared with an independent float64 numpy implementation written from
the paper's formula (loops, no shared code), and its gradient with central finite
differences of that numpy implementation (quantities the loss detaches are frozen at
the base point in the numpy version).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtl.losses as L
from loss_helpers import J, check_grad, jgrad, np_softmax, rand, x64  # noqa: F401 (x64: autouse fixture)


def np_row_entropy(p):
    return np.array([-sum(pc * math.log(pc) for pc in row if pc > 0) for row in p])


def test_grl_identity_forward_and_exact_reversed_gradient():
    x, w = rand(4, 3, seed=1), rand(4, 3, seed=2)
    for c in (1.0, 0.3, 2.5):
        np.testing.assert_array_equal(np.asarray(L.grl(x, c)), x)
        g = jgrad(lambda a: jnp.sum(jnp.asarray(w) * L.grl(a, c)))(x)
        np.testing.assert_array_equal(np.asarray(g), -c * w)
        # arbitrary cotangent through vjp
        _, vjp = jax.vjp(lambda a: L.grl(a, c), jnp.asarray(x))
        np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(w))[0]), -c * w)
    # coeff 0 blocks the gradient
    g0 = jgrad(lambda a: jnp.sum(L.grl(a, 0.0) ** 2))(x)
    np.testing.assert_array_equal(np.asarray(g0), np.zeros_like(x))


def test_grl_scales_gradient_of_nonlinear_loss_and_inside_jit():
    x = rand(5, 2, seed=3)

    def f(a):
        return jnp.sum(jnp.tanh(a) ** 2 * jnp.arange(1.0, 3.0))

    ref = np.asarray(jgrad(f)(x))
    step = jax.jit(jgrad(lambda a, c: f(L.grl(a, c))))
    for c in (1.0, 0.7):
        np.testing.assert_allclose(np.asarray(step(x, c)), -c * ref, rtol=1e-14, atol=0)
    # no gradient flows into the (traced) coefficient
    assert float(jgrad(lambda c: f(L.grl(jnp.asarray(x), c)))(0.5)) == 0.0


def test_grl_pytree_and_dtype():
    tree = {"a": jnp.ones((2,), jnp.bfloat16), "b": jnp.ones((3,), jnp.float32)}
    g = jgrad(lambda t: jnp.sum(L.grl(t, 2.0)["a"].astype(jnp.float32)) + jnp.sum(L.grl(t, 2.0)["b"]))(tree)
    assert g["a"].dtype == jnp.bfloat16 and g["b"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(g["a"], np.float32), -2.0 * np.ones(2))
    np.testing.assert_array_equal(np.asarray(g["b"]), -2.0 * np.ones(3))


def test_grl_coeff_schedule():
    for p in (0.0, 0.1, 0.5, 1.0):
        expected = 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
        assert float(J.grl_coeff(p)) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert float(J.grl_coeff(p, alpha=5.0, high=0.5)) == pytest.approx(
            0.5 * (2.0 / (1.0 + math.exp(-5.0 * p)) - 1.0), rel=1e-12, abs=1e-15)
    assert float(J.grl_coeff(0.0)) == 0.0
    vals = np.asarray(jax.jit(jax.vmap(L.grl_coeff))(jnp.linspace(0.0, 1.0, 11)))
    assert np.all(np.diff(vals) > 0) and 0.99 < vals[-1] < 1.0


# ---------------------------------------------------------------- DANN / CDAN


def np_bce(z, y):
    s = 1.0 / (1.0 + math.exp(-z))
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


def np_dann(zs, zt, ws=None, wt=None):
    zs, zt = np.ravel(zs), np.ravel(zt)
    ws = np.ones(len(zs)) if ws is None else ws
    wt = np.ones(len(zt)) if wt is None else wt
    ls = sum(w * np_bce(z, 1) for z, w in zip(zs, ws)) / sum(ws)
    lt = sum(w * np_bce(z, 0) for z, w in zip(zt, wt)) / sum(wt)
    return 0.5 * (ls + lt)


def test_dann_matches_numpy_and_gradient():
    zs, zt = rand(6, 1, seed=4, scale=2), rand(5, seed=5, scale=2)
    assert float(J.dann(zs, zt)) == pytest.approx(np_dann(zs, zt), rel=1e-12)
    ws, wt = np.random.default_rng(6).uniform(0.5, 2, 6), np.random.default_rng(7).uniform(0.5, 2, 5)
    assert float(J.dann(zs, zt, ws, wt)) == pytest.approx(np_dann(zs, zt, ws, wt), rel=1e-12)
    check_grad(lambda a: L.dann(a, zt), lambda a: np_dann(a, zt), zs)
    check_grad(lambda a: L.dann(zs, a, ws, wt), lambda a: np_dann(zs, a, ws, wt), zt)


def test_dann_is_stable_for_extreme_logits():
    with jax.enable_x64(False):
        big = jnp.array([1e4, 500.0], jnp.float32)
        assert float(J.dann(big, -big)) == 0.0
        # -log sigmoid(-z) = z + log(1 + e^-z) ~= z for large z
        assert float(J.dann(-big, big)) == pytest.approx(0.5 * 2 * np.mean([1e4, 500.0]), rel=1e-6)
        g = jgrad(lambda a: L.dann(a, big))(-big)
        assert np.all(np.isfinite(np.asarray(g)))


def test_cdan_entropy_conditioning_matches_original_formulation():
    rng = np.random.default_rng(8)
    ps, pt = np_softmax(rng.standard_normal((6, 4)) * 2), np_softmax(rng.standard_normal((7, 4)) * 2)
    zs, zt = rand(6, seed=9), rand(7, seed=10)
    # CDAN+E as written in the paper's code: w = 1 + e^-H, normalised per domain, loss = sum(w * bce) / sum(w)
    es, et = 1 + np.exp(-np_row_entropy(ps)), 1 + np.exp(-np_row_entropy(pt))
    es, et = es / es.sum(), et / et.sum()
    bce = [np_bce(z, 1) for z in zs] + [np_bce(z, 0) for z in zt]
    w = np.concatenate([es, et])
    expected = float(np.sum(w * np.array(bce)) / np.sum(w))

    ws, wt = L.entropy_weights(ps), L.entropy_weights(pt)
    np.testing.assert_allclose(np.asarray(ws), es * 6, rtol=1e-12)  # mean-one weights
    np.testing.assert_allclose(np.asarray(wt), et * 7, rtol=1e-12)
    assert float(J.cdan(zs, zt, ws, wt)) == pytest.approx(expected, rel=1e-12)
    assert float(J.cdan(zs, zt)) == pytest.approx(np_dann(zs, zt), rel=1e-12)
    # weights are constants: no gradient into the predictions
    g = jgrad(lambda p: L.cdan(zs, zt, L.entropy_weights(p), wt))(jnp.asarray(ps))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_multilinear_map_matches_outer_product():
    f, g = rand(3, 5, seed=11), rand(3, 4, seed=12)
    p = np_softmax(g)
    expected = np.zeros((3, 20))
    for b in range(3):
        for i in range(5):
            for c in range(4):
                expected[b, i * 4 + c] = f[b, i] * p[b, c]
    np.testing.assert_allclose(np.asarray(J.multilinear_map(f, g)), expected, rtol=1e-12)
    u = rand(3, 20, seed=13)
    check_grad(lambda a: jnp.sum(L.multilinear_map(a, g) * u),
               lambda a: np.sum(np.einsum("bi,bc->bic", a, p).reshape(3, -1) * u), f)
    # predictions are detached by default, not with detach=False
    gg = jgrad(lambda b: jnp.sum(L.multilinear_map(f, b) * u))(g)
    np.testing.assert_array_equal(np.asarray(gg), 0.0)
    check_grad(lambda b: jnp.sum(L.multilinear_map(f, b, detach=False) * u),
               lambda b: np.sum(np.einsum("bi,bc->bic", f, np_softmax(b)).reshape(3, -1) * u), g)


def test_randomized_multilinear_map():
    f, g = rand(3, 5, seed=14), rand(3, 4, seed=15)
    rf, rg = L.randomized_multilinear_matrices(jax.random.key(0), 5, 4, output_dim=16)
    assert rf.shape == (5, 16) and rg.shape == (4, 16)
    rf, rg = np.asarray(rf), np.asarray(rg)
    p = np_softmax(g)
    expected = np.zeros((3, 16))
    for b in range(3):
        for k in range(16):
            expected[b, k] = sum(f[b, i] * rf[i, k] for i in range(5)) * sum(p[b, c] * rg[c, k] for c in range(4))
    expected /= math.sqrt(16)
    np.testing.assert_allclose(np.asarray(J.randomized_multilinear_map(f, g, rf, rg)), expected, rtol=1e-12)
    # inner products approximate those of the exact multilinear map (unbiased, d large)
    rf, rg = L.randomized_multilinear_matrices(jax.random.key(1), 5, 4, output_dim=40000)
    t = np.asarray(J.randomized_multilinear_map(f, g, rf, rg))
    m = np.asarray(J.multilinear_map(f, g))
    np.testing.assert_allclose(t @ t.T, m @ m.T, atol=0.1 * np.abs(m @ m.T).max())


# ---------------------------------------------------------------- MMD / JMMD


def np_sqdist(a, b):
    return float(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))


def np_bandwidth(z):
    n = len(z)
    return sum(np_sqdist(z[i], z[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))


def np_kernel(layers_a, layers_b, bws, alphas_per_layer):
    """Product over layers of sums of Gaussians, for one pair of samples."""
    k = 1.0
    for a, b, bw, alphas in zip(layers_a, layers_b, bws, alphas_per_layer):
        k *= sum(math.exp(-np_sqdist(a, b) / (al * bw)) for al in alphas)
    return k


def np_jmmd(list_xs, list_xt, alphas_per_layer, linear=False, bws=None):
    list_xs = [np.reshape(x, (len(x), -1)) for x in list_xs]
    list_xt = [np.reshape(x, (len(x), -1)) for x in list_xt]
    if bws is None:
        bws = [np_bandwidth(np.concatenate([s, t])) for s, t in zip(list_xs, list_xt)]
    m, n = len(list_xs[0]), len(list_xt[0])

    def k(dom_a, i, dom_b, j):
        return np_kernel([x[i] for x in dom_a], [x[j] for x in dom_b], bws, alphas_per_layer)

    S, T = list_xs, list_xt
    if linear:  # Gretton et al. 2012, Lemma 14
        pairs = m // 2
        h = 0.0
        for i in range(pairs):
            a, b = 2 * i, 2 * i + 1
            h += k(S, a, S, b) + k(T, a, T, b) - k(S, a, T, b) - k(S, b, T, a)
        return h / pairs
    ss = sum(k(S, i, S, j) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    tt = sum(k(T, i, T, j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    st = sum(k(S, i, T, j) for i in range(m) for j in range(n)) / (m * n)
    return ss + tt - 2 * st


ALPHAS = (0.5, 1.0, 2.0)


@pytest.mark.parametrize("linear", [False, True])
def test_mk_mmd_matches_numpy_and_gradient(linear):
    xs, xt = rand(8, 3, seed=20), rand(8 if linear else 6, 3, seed=21) + 0.5
    expected = np_jmmd([xs], [xt], [ALPHAS], linear)
    assert float(J.mk_mmd(xs, xt, linear=linear)) == pytest.approx(expected, rel=1e-10)
    alphas = (0.25, 4.0)
    assert float(J.mk_mmd(xs, xt, alphas=alphas, linear=linear)) == pytest.approx(
        np_jmmd([xs], [xt], [alphas], linear), rel=1e-10)
    # bandwidth is detached: freeze it at the base point in the numpy version
    bw = [np_bandwidth(np.concatenate([xs, xt]))]
    check_grad(lambda a: L.mk_mmd(a, xt, linear=linear), lambda a: np_jmmd([a], [xt], [ALPHAS], linear, bw), xs)
    check_grad(lambda a: L.mk_mmd(xs, a, linear=linear), lambda a: np_jmmd([xs], [a], [ALPHAS], linear, bw), xt)


@pytest.mark.parametrize("linear", [False, True])
def test_jmmd_matches_numpy_and_gradient(linear):
    fs, ft = rand(6, 4, seed=22), rand(6, 4, seed=23) * 1.5
    ps, pt = np_softmax(rand(6, 3, seed=24) * 2), np_softmax(rand(6, 3, seed=25) * 2)
    apl = ((0.5, 1.0, 2.0), (1.0,))
    expected = np_jmmd([fs, ps], [ft, pt], apl, linear)
    assert float(J.jmmd([fs, ps], [ft, pt], alphas_per_layer=apl, linear=linear)) == pytest.approx(expected, rel=1e-10)
    default = np_jmmd([fs, ps], [ft, pt], [ALPHAS, ALPHAS], linear)
    assert float(J.jmmd([fs, ps], [ft, pt], linear=linear)) == pytest.approx(default, rel=1e-10)
    bws = [np_bandwidth(np.concatenate([fs, ft])), np_bandwidth(np.concatenate([ps, pt]))]
    check_grad(lambda a: L.jmmd([a, ps], [ft, pt], alphas_per_layer=apl, linear=linear),
               lambda a: np_jmmd([a, ps], [ft, pt], apl, linear, bws), fs)
    check_grad(lambda a: L.jmmd([fs, ps], [ft, a], alphas_per_layer=apl, linear=linear),
               lambda a: np_jmmd([fs, ps], [ft, a], apl, linear, bws), pt)


def test_mmd_same_vs_shifted_distributions():
    rng = np.random.default_rng(30)
    x = rng.standard_normal((32, 8))
    # identical samples: linear estimator is exactly 0; unbiased quadratic one is
    # -(2/m)(k(0) - mean off-diagonal k), within [-2K/m, 0] (K = 3 kernels)
    assert abs(float(J.mk_mmd(x, x, linear=True))) < 1e-12
    same = float(J.mk_mmd(x, x))
    assert -2 * 3 / 32 <= same <= 0.0
    assert abs(float(J.jmmd([x, x], [x, x], linear=True))) < 1e-12
    # two samples of one distribution vs a shifted one
    y = rng.standard_normal((32, 8))
    shifted = rng.standard_normal((32, 8)) + 3.0
    assert abs(float(J.mk_mmd(x, y))) < 0.2
    assert float(J.mk_mmd(x, shifted)) > 1.0
    assert float(J.mk_mmd(x, shifted, linear=True)) > 0.5
    assert float(J.jmmd([x, x], [shifted, shifted])) > 1.0


def test_mmd_argument_errors():
    x = rand(6, 2)
    with pytest.raises(ValueError):
        L.mk_mmd(x, x[:4], linear=True)
    with pytest.raises(ValueError):
        L.jmmd([x, x], [x])
    with pytest.raises(ValueError):
        L.jmmd([x], [x], alphas_per_layer=[ALPHAS, ALPHAS])


# ---------------------------------------------------------------- CORAL


def np_coral(xs, xt):
    def cov(x):
        n, d = x.shape
        ones = np.ones((1, n))
        return (x.T @ x - (ones @ x).T @ (ones @ x) / n) / (n - 1)

    d = xs.shape[1]
    return float(np.sum((cov(xs) - cov(xt)) ** 2) / (4 * d * d))


def test_coral_matches_numpy_gradient_and_zero():
    xs, xt = rand(9, 4, seed=40), rand(7, 4, seed=41) * np.array([1.0, 2.0, 0.5, 1.0]) + 1.0
    assert float(J.coral(xs, xt)) == pytest.approx(np_coral(xs, xt), rel=1e-12)
    check_grad(lambda a: L.coral(a, xt), lambda a: np_coral(a, xt), xs)
    check_grad(lambda a: L.coral(xs, a), lambda a: np_coral(xs, a), xt)
    assert abs(float(J.coral(xs, xs))) < 1e-20
    assert abs(float(J.coral(xs, xs + 5.0))) < 1e-20  # a pure shift is invisible to CORAL
    assert float(J.coral(xs, 3.0 * xs)) > 0.1 * np_coral(xs, 3.0 * xs) > 0
    with pytest.raises(ValueError):
        L.coral(xs, xt[:, :3])


# ---------------------------------------------------------------- MDD


def np_mdd(logits_s, logits_t, adv_s, adv_t, margin):
    ps, pt = np_softmax(adv_s), np_softmax(adv_t)
    src = np.mean([-math.log(ps[i, int(np.argmax(logits_s[i]))]) for i in range(len(adv_s))])
    tgt = np.mean([math.log(1.0 - pt[j, int(np.argmax(logits_t[j]))]) for j in range(len(adv_t))])
    return margin * src - tgt


def test_mdd_matches_numpy_and_gradient():
    ls, lt = rand(5, 4, seed=50), rand(6, 4, seed=51)
    adv_s, adv_t = rand(5, 4, seed=52, scale=2), rand(6, 4, seed=53, scale=2)
    logits = np.concatenate([ls, lt])
    for margin in (4.0, 1.5):
        expected = np_mdd(ls, lt, adv_s, adv_t, margin)
        assert float(J.mdd(logits, adv_s, adv_t, margin=margin)) == pytest.approx(expected, rel=1e-12)
        assert float(J.mdd((ls, lt), adv_s, adv_t, margin=margin)) == pytest.approx(expected, rel=1e-12)
    check_grad(lambda a: L.mdd(logits, a, adv_t), lambda a: np_mdd(ls, lt, a, adv_t, 4.0), adv_s)
    check_grad(lambda a: L.mdd(logits, adv_s, a), lambda a: np_mdd(ls, lt, adv_s, a, 4.0), adv_t)
    # the main classifier only provides pseudo-labels
    g = jgrad(lambda z: L.mdd(z, adv_s, adv_t))(logits)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    with pytest.raises(ValueError):
        L.mdd(logits[:-1], adv_s, adv_t)


def test_mdd_with_grl_adversarial_head():
    """The head after grl gets the plain gradient, the features the reversed one."""
    fs, ft, w = rand(4, 3, seed=54), rand(5, 3, seed=55), rand(3, 4, seed=56)
    ls, lt = rand(4, 4, seed=57), rand(5, 4, seed=58)

    def loss(w, fs, ft, c=0.5):
        return L.mdd((ls, lt), L.grl(fs, c) @ w, L.grl(ft, c) @ w)

    check_grad(lambda a: loss(a, fs, ft), lambda a: np_mdd(ls, lt, fs @ a, ft @ a, 4.0), w)
    gf = np.asarray(jgrad(loss, argnums=1)(w, fs, ft))
    plain = check_grad(lambda a: L.mdd((ls, lt), a @ w, ft @ w), lambda a: np_mdd(ls, lt, a @ w, ft @ w, 4.0), fs)
    np.testing.assert_allclose(gf, -0.5 * plain, rtol=1e-12)


def test_mdd_target_term_is_stable():
    with jax.enable_x64(False):
        c = 5
        adv_t = jnp.zeros((3, c), jnp.float32).at[:, 0].set(50.0)  # softmax(adv_t)[0] rounds to 1 in float32
        lt = jnp.zeros((3, c), jnp.float32).at[:, 0].set(1.0)
        adv_s, ls = jnp.zeros((2, c)), jnp.zeros((2, c))
        val = J.mdd((ls, lt), adv_s, adv_t, margin=0.0)
        # -log(1 - p) = -(log(c - 1) - log(e^50 + c - 1)) ~= 50 - log(c - 1)
        assert float(val) == pytest.approx(50.0 - math.log(c - 1), rel=1e-6)
        g = jgrad(lambda a: L.mdd((ls, lt), adv_s, a, margin=0.0))(adv_t)
        assert np.all(np.isfinite(np.asarray(g)))
