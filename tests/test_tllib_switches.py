"""Transfer-Learning-Library (TLlib) switches of the adaptation losses, and the AFN piece.

Each switch is checked against float64 numpy implementations of *both* conventions, written
from the formulas (TLlib's where it differs: tllib/alignment/cdan.py, coral.py, dan.py, mcd.py,
mdd.py, tllib/modules/kernels.py), never against jtl's own output; the defaults must keep
jtl's documented conventions.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jtl.losses as L
from jtl.losses.mcd import class_balance
from jtl.train import adapt_pieces as P
from jtl.train.pieces import Context
from loss_helpers import check_grad, jgrad, np_softmax, rand, x64  # noqa: F401 (x64: autouse fixture)


def ctx(out, heads=None):
    """A step context holding only ``out`` and the extra heads ``{name: fn}``."""
    return Context(params=None, anchor=None, batch={}, out={k: jnp.asarray(v) for k, v in out.items()}, teacher=None,
                   progress=jnp.asarray(0.5), rng=jax.random.key(0),
                   apply_head=(lambda name, x: heads[name](x)) if heads else None)


def np_entropy(p):
    return np.array([-sum(q * math.log(q) for q in row if q > 0) for row in p])


def np_bce(z, y):
    """Binary cross-entropy of logit z against label y, -[y log s + (1 - y) log(1 - s)], s = sigmoid(z)."""
    s = 1.0 / (1.0 + np.exp(-z))
    return -(y * np.log(s) + (1 - y) * np.log(1 - s))


# ---------------------------------------------------------------------------------- CDAN+E
def np_cdan_domain(zs, zt, ps, pt):
    """Per-domain weighted means averaged (the authors' code): 1/2 [sum w l / sum w]_s + [...]_t."""
    ws, wt = 1 + np.exp(-np_entropy(ps)), 1 + np.exp(-np_entropy(pt))
    return 0.5 * (np.sum(ws * np_bce(zs, 1)) / np.sum(ws) + np.sum(wt * np_bce(zt, 0)) / np.sum(wt))


def np_cdan_tllib(zs, zt, ps, pt, entropy=True):
    """TLlib: w = 1 + exp(-H) over the joint batch, scaled to mean 1, then mean_k w_k BCE_k."""
    z, y = np.concatenate([zs, zt]), np.concatenate([np.ones(len(zs)), np.zeros(len(zt))])
    w = 1 + np.exp(-np_entropy(np.concatenate([ps, pt]))) if entropy else np.ones(len(z))
    w = w / w.sum() * len(z)
    return np.mean(w * np_bce(z, y))


def test_cdan_normalize_domain_and_joint_match_numpy():
    zs, zt = rand(5, seed=1), rand(7, seed=2)
    ps, pt = np_softmax(3 * rand(5, 4, seed=3)), np_softmax(rand(7, 4, seed=4))

    @jax.jit
    def values(zs, zt, ps, pt):
        w = L.entropy_weights(jnp.concatenate([ps, pt]))
        return (L.cdan(zs, zt, L.entropy_weights(ps), L.entropy_weights(pt)),
                L.cdan(zs, zt, w[:5], w[5:], normalize="joint"), L.cdan(zs, zt, normalize="joint"), w)

    domain, joint, plain, w = values(zs, zt, ps, pt)
    assert float(domain) == pytest.approx(np_cdan_domain(zs, zt, ps, pt), rel=1e-12)
    assert float(joint) == pytest.approx(np_cdan_tllib(zs, zt, ps, pt), rel=1e-12)
    assert abs(float(domain) - float(joint)) > 1e-3  # the switch matters
    # without weights: TLlib's plain mean over the joint batch (not the average of domain means when m != n)
    assert float(plain) == pytest.approx(np_cdan_tllib(zs, zt, ps, pt, entropy=False), rel=1e-12)
    # gradient (weights are constants)
    ww = np.asarray(w)
    check_grad(lambda a: L.cdan(a, zt, ww[:5], ww[5:], normalize="joint"),
               lambda a: np.sum(ww * np_bce(np.concatenate([a, zt]), np.r_[np.ones(5), np.zeros(7)])) / ww.sum(), zs)
    with pytest.raises(ValueError, match="normalize"):
        L.cdan(zs, zt, normalize="batch")


def test_cdan_piece_joint_is_tllibs_loss():
    """The piece with ``normalize="joint"``: TLlib's entropy-conditioned loss on D(f (x) softmax(g))."""
    fs, ft, gs, gt = rand(4, 3, seed=5), rand(4, 3, seed=6), 2 * rand(4, 2, seed=7), rand(4, 2, seed=8)
    wd = rand(6, seed=9)  # a linear "discriminator" on the (D * C = 6)-wide conditioning

    def np_map(f, g):  # T[i * C + c] = f_i * softmax(g)_c
        p = np_softmax(g)
        return np.array([[f[b, i] * p[b, c] for i in range(f.shape[1]) for c in range(p.shape[1])]
                         for b in range(f.shape[0])])

    zs, zt = np_map(fs, gs) @ wd, np_map(ft, gt) @ wd
    c = ctx({"f_s": fs, "f_t": ft, "logits": gs, "logits_t": gt}, {"disc": lambda h: (h @ jnp.asarray(wd))[:, None]})
    got_joint, got_domain = jax.jit(lambda: (P.cdan_piece(c, normalize="joint")[0], P.cdan_piece(c)[0]))()
    assert float(got_joint) == pytest.approx(np_cdan_tllib(zs, zt, np_softmax(gs), np_softmax(gt)), rel=1e-12)
    assert float(got_domain) == pytest.approx(np_cdan_domain(zs, zt, np_softmax(gs), np_softmax(gt)), rel=1e-12)


# ---------------------------------------------------------------------------------- Deep CORAL
def np_cov(x):
    mu = x.mean(axis=0)
    return sum(np.outer(r - mu, r - mu) for r in x) / (len(x) - 1)


def np_coral(xs, xt, convention):
    d = xs.shape[1]
    diff = np_cov(xs) - np_cov(xt)
    if convention == "paper":  # Sun & Saenko 2016, Eq. 1
        return np.sum(diff**2) / (4 * d * d)
    return np.mean((xs.mean(0) - xt.mean(0)) ** 2) + np.mean(diff**2)  # TLlib: mean_diff + cov_diff


def test_coral_conventions_match_numpy():
    xs, xt = rand(6, 3, seed=10), 1.5 * rand(5, 3, seed=11) + 0.7

    @jax.jit
    def values(a, b):
        c = ctx({"f_s": a, "f_t": b})
        return (L.coral(a, b), L.coral(a, b, convention="tllib"),
                P.coral_piece(c), P.coral_piece(c, convention="tllib"))

    default, tllib, piece_default, piece_tllib = map(float, values(xs, xt))
    assert default == pytest.approx(np_coral(xs, xt, "paper"), rel=1e-12)  # the default: the paper
    assert tllib == pytest.approx(np_coral(xs, xt, "tllib"), rel=1e-12)
    assert (piece_default, piece_tllib) == pytest.approx((default, tllib), rel=1e-12)
    assert abs(default - tllib) > 1e-3
    check_grad(lambda a: L.coral(a, xt, convention="tllib"), lambda a: np_coral(a, xt, "tllib"), xs)
    with pytest.raises(ValueError, match="convention"):
        L.coral(xs, xt, convention="sum")


# ---------------------------------------------------------------------------------- MK-MMD
ALPHAS = (0.5, 1.0, 2.0)


def np_kernel_fn(z, alphas, bandwidth, bws=None):
    """The multi-kernel k(a, b) of the joint batch z: jtl's (offdiag) or TLlib's GaussianKernel sum."""
    n = len(z)
    d2 = np.array([[np.sum((a - b) ** 2) for b in z] for a in z])
    if bandwidth == "offdiag":  # k = sum exp(-d^2 / (alpha * mean_{i != j} d^2))
        bw = d2.sum() / (n * (n - 1)) if bws is None else bws
        return lambda a, b: sum(math.exp(-np.sum((a - b) ** 2) / (al * bw)) for al in alphas)
    sigma2 = [al * d2.mean() for al in alphas] if bws is None else [al * bws for al in alphas]  # TLlib
    return lambda a, b: sum(math.exp(-np.sum((a - b) ** 2) / (2 * s2)) for s2 in sigma2)


def np_linear_mmd(xs, xt, alphas, pairs, bandwidth, bws=None):
    k = np_kernel_fn(np.concatenate([xs, xt]), alphas, bandwidth, bws)
    n = len(xs)
    if pairs == "disjoint":  # Gretton et al. 2012, Lemma 14: (2i, 2i+1)
        idx = [(2 * i, 2 * i + 1) for i in range(n // 2)]
    else:  # TLlib: (i, i + 1 mod n)
        idx = [(i, (i + 1) % n) for i in range(n)]
    return np.mean([k(xs[a], xs[b]) + k(xt[a], xt[b]) - k(xs[a], xt[b]) - k(xs[b], xt[a]) for a, b in idx])


def np_tllib_index_mmd(xs, xt, alphas, linear):
    """TLlib's MultipleKernelMaximumMeanDiscrepancy.forward without its constant 2/(n-1):
    sum(K * index_matrix), index_matrix filled by assignment as _update_index_matrix does."""
    n = len(xs)
    z = np.concatenate([xs, xt])
    k = np_kernel_fn(z, alphas, "tllib")
    kmat = np.array([[k(a, b) for b in z] for a in z])
    idx = np.zeros((2 * n, 2 * n))
    if linear:
        for i in range(n):
            s1, s2 = i, (i + 1) % n
            t1, t2 = s1 + n, s2 + n
            idx[s1, s2] = idx[t1, t2] = 1.0 / n
            idx[s1, t2] = idx[s2, t1] = -1.0 / n
    else:
        for i in range(n):
            for j in range(n):
                if i != j:
                    idx[i, j] = idx[i + n, j + n] = 1.0 / (n * (n - 1))
                idx[i, j + n] = idx[i + n, j] = -1.0 / (n * n)
    return np.sum(kmat * idx)


def test_linear_mmd_pairs_and_bandwidths_match_numpy():
    n = 7  # odd: the disjoint pairs drop the last sample, the circular ones use it
    xs, xt = rand(n, 3, seed=20), rand(n, 3, seed=21) + 0.5
    combos = [(p, b) for p in ("disjoint", "circular") for b in ("offdiag", "tllib")]
    tllib_alphas = tuple(2.0**k for k in range(-3, 2))  # TLlib's DAN example: 2^-3 .. 2

    @jax.jit
    def values(a, b):
        c = ctx({"f_s": a, "f_t": b})
        return ([L.mk_mmd(a, b, linear=True, pairs=p, bandwidth=bw) for p, bw in combos],
                L.mk_mmd(a, b, linear=True),
                P.mmd_piece(c, alphas=tllib_alphas, linear=True, pairs="circular", bandwidth="tllib"))

    got, default, piece = values(xs, xt)
    for (pairs, bandwidth), g in zip(combos, got):
        assert float(g) == pytest.approx(np_linear_mmd(xs, xt, ALPHAS, pairs, bandwidth), rel=1e-10), (pairs, bandwidth)
    assert float(default) == pytest.approx(np_linear_mmd(xs, xt, ALPHAS, "disjoint", "offdiag"), rel=1e-10)
    # TLlib's DAN (5 kernels, circular, its bandwidth), literally as its index matrix computes it
    assert float(piece) == pytest.approx(np_tllib_index_mmd(xs, xt, tllib_alphas, linear=True), rel=1e-10)


def test_circular_mmd_gradient_and_tllib_bandwidth_unbiased():
    xs, xt = rand(5, 3, seed=22), rand(5, 3, seed=23) + 0.3
    z = np.concatenate([xs, xt])
    bw = np.mean([[np.sum((a - b) ** 2) for b in z] for a in z])  # TLlib's mean over all pairs, frozen
    check_grad(lambda a: L.mk_mmd(a, xt, linear=True, pairs="circular", bandwidth="tllib"),
               lambda a: np_linear_mmd(a, xt, ALPHAS, "circular", "tllib", bws=bw), xs)
    # the unbiased estimator with TLlib's kernel is TLlib's non-linear index matrix
    got = float(jax.jit(lambda a, b: L.mk_mmd(a, b, bandwidth="tllib"))(xs, xt))
    assert got == pytest.approx(np_tllib_index_mmd(xs, xt, ALPHAS, linear=False), rel=1e-10)
    with pytest.raises(ValueError, match="pairs"):
        L.mk_mmd(xs, xt, linear=True, pairs="overlap")
    with pytest.raises(ValueError, match="bandwidth"):
        L.mk_mmd(xs, xt, bandwidth="median")


def test_jmmd_circular_tllib_is_the_product_kernel():
    fs, ft = rand(5, 3, seed=24), rand(5, 3, seed=25)
    ps, pt = np_softmax(rand(5, 4, seed=26)), np_softmax(rand(5, 4, seed=27))
    k1 = np_kernel_fn(np.concatenate([fs, ft]), ALPHAS, "tllib")
    k2 = np_kernel_fn(np.concatenate([ps, pt]), (1.0,), "tllib")
    k = lambda i, a, j, b: k1(a[0][i], b[0][j]) * k2(a[1][i], b[1][j])  # noqa: E731
    s, t = (fs, ps), (ft, pt)
    want = np.mean([k(i, s, (i + 1) % 5, s) + k(i, t, (i + 1) % 5, t) - k(i, s, (i + 1) % 5, t)
                    - k((i + 1) % 5, s, i, t) for i in range(5)])
    got = jax.jit(lambda *a: L.jmmd(a[:2], a[2:], alphas_per_layer=[ALPHAS, (1.0,)], linear=True, pairs="circular",
                                    bandwidth="tllib"))(fs, ps, ft, pt)
    assert float(got) == pytest.approx(want, rel=1e-10)


# ---------------------------------------------------------------------------------- MCD
def np_class_balance(z, eps=1e-6):
    """TLlib's MCD ``entropy``: -1/K sum_k log(mean_i p_ik + eps)."""
    p_bar = np_softmax(z).mean(axis=0)
    return -np.mean(np.log(p_bar + eps))


def test_mcd_class_balance_matches_numpy():
    z, ft, w2 = 2 * rand(6, 4, seed=30), rand(6, 3, seed=31), rand(3, 4, seed=32)
    uniform, collapsed = np.zeros((6, 4)), np.tile([9.0, 0, 0, 0], (6, 1))

    @jax.jit
    def values(z, ft):
        c = ctx({"f_t": ft, "logits_t": z}, {"head2": lambda x: x @ jnp.asarray(w2)})
        return class_balance(z), class_balance(uniform), class_balance(collapsed), P.mcd_balance_piece(c)

    value, at_uniform, at_collapsed, piece = map(float, values(z, ft))
    assert value == pytest.approx(np_class_balance(z), rel=1e-12)
    # about log C for balanced predictions, larger for a collapsed batch
    assert at_uniform == pytest.approx(-math.log(0.25 + 1e-6), rel=1e-12)
    assert at_collapsed == pytest.approx(np_class_balance(collapsed), rel=1e-12) and at_collapsed > math.log(4) + 1
    # the piece: both classifiers' target predictions
    assert piece == pytest.approx(np_class_balance(z) + np_class_balance(ft @ w2), rel=1e-12)
    check_grad(class_balance, np_class_balance, z)


def _mcd_cfg(**mcd_options):
    return ml_collections.ConfigDict({"loss_options": {"mcd": mcd_options}, "adapt": {"mcd_generator_steps": 4}})


def test_mcd_phases_add_the_balance_term_to_steps_a_and_b_only_when_asked():
    loss = (("ce", 1.0), ("mcd", 1.0))
    for cfg in (_mcd_cfg(), _mcd_cfg(balance_weight=0.0)):  # off by default: today's three steps exactly
        a, b, c = P.mcd_phases(loss, cfg)
        assert (a.loss, b.loss, c.loss) == ((("ce", 1.0), ("ce2", 1.0)), (("ce", 1.0), ("ce2", 1.0), ("mcd", -1.0)),
                                            (("mcd", 1.0),))
    a, b, c = P.mcd_phases(loss, _mcd_cfg(balance_weight=0.01))
    assert ("mcd_balance", 0.01) in a.loss and ("mcd_balance", 0.01) in b.loss
    assert c.loss == (("mcd", 1.0),) and c.repeats == 4
    assert b.trainable == r"^(head|head2)/"


# ---------------------------------------------------------------------------------- MDD
def np_mdd(ys, ys_adv, yt, yt_adv, margin, convention):
    """Sign as jtl's (the adversary minimises): gamma CE_s - mean log(1 - p_t); TLlib's shift_log
    log(min(1 - p + 1e-6, 1)) for convention "tllib" (its forward returns the negative)."""
    hs, ht = ys.argmax(1), yt.argmax(1)
    ce = -np.log(np_softmax(ys_adv)[np.arange(len(hs)), hs])
    p = np_softmax(yt_adv)[np.arange(len(ht)), ht]
    log1mp = np.log(np.minimum(1 - p + 1e-6, 1.0)) if convention == "tllib" else np.log1p(-p)
    return margin * ce.mean() - log1mp.mean()


def test_mdd_conventions_match_numpy():
    ys, yt = rand(5, 3, seed=40), rand(5, 3, seed=41)
    ys_adv, yt_adv = rand(5, 3, seed=42), 2 * rand(5, 3, seed=43)
    near_one = yt_adv.copy()
    near_one[0, yt[0].argmax()] = 14.0  # p = 1 - O(1e-6): where the two conventions differ

    @jax.jit
    def values(a, b):
        return [L.mdd((ys, yt), a, b, margin=4.0, convention=c) for c in ("paper", "tllib")] + [L.mdd((ys, yt), a, b)]

    for b in (yt_adv, near_one):
        paper, tllib, default = map(float, values(ys_adv, b))
        assert paper == pytest.approx(np_mdd(ys, ys_adv, yt, b, 4.0, "paper"), rel=1e-10)
        assert tllib == pytest.approx(np_mdd(ys, ys_adv, yt, b, 4.0, "tllib"), rel=1e-10)
        assert default == paper
    assert abs(paper - tllib) > 0.05  # at p near 1 (with moderate p they agree to about 1e-6)
    check_grad(lambda b: L.mdd((ys, yt), ys_adv, b, convention="tllib"),
               lambda b: np_mdd(ys, ys_adv, yt, b, 4.0, "tllib"), yt_adv)


# ---------------------------------------------------------------------------------- AFN
def np_afn(f, delta, radius=None):
    """SAFN of one domain: mean_i (r0_i + delta - ||f_i||)^2, r0 = ||f_i|| at the base point (detached)."""
    r = np.linalg.norm(f, axis=1)
    r0 = r if radius is None else radius
    return np.mean((r0 + delta - r) ** 2)


def test_afn_piece_is_the_sum_over_domains():
    """afn(f_s) + afn(f_t), as jtl.losses.norm's docstring and TLlib's afn example say (one afn over
    the joint batch, the earlier piece, has half this value and half this gradient)."""
    fs, ft, delta = rand(4, 3, seed=50), rand(6, 3, seed=51) + 0.2, 0.7
    rs, rt = np.linalg.norm(fs, axis=1), np.linalg.norm(ft, axis=1)
    piece = lambda a, b: P.afn_piece(ctx({"f_s": a, "f_t": b}), delta=delta)  # noqa: E731
    value = float(jax.jit(piece)(fs, ft))
    assert value == pytest.approx(np_afn(fs, delta) + np_afn(ft, delta), rel=1e-12)
    assert value == pytest.approx(2 * delta**2, rel=1e-12)
    check_grad(lambda a: piece(a, ft), lambda a: np_afn(a, delta, rs) + np_afn(ft, delta, rt), fs)
    check_grad(lambda b: piece(fs, b), lambda b: np_afn(fs, delta, rs) + np_afn(b, delta, rt), ft)
    # closed form: d/df_i = -2 delta f_i / (B ||f_i||), with B the sample's own domain size
    g = np.asarray(jgrad(lambda a: piece(a, ft))(fs))
    np.testing.assert_allclose(g, -2 * delta * fs / (len(fs) * rs[:, None]), rtol=1e-12)
