"""Multi-kernel MMD (DAN; Long et al., ICML 2015) and joint MMD (JAN; Long et al., ICML 2017).

Kernel of one layer, a sum of Gaussians with a data-driven bandwidth:

    k(a, b) = sum_alpha exp(-||a - b||^2 / (alpha * bw)),
    bw = mean_{i != j} ||z_i - z_j||^2 over the joint batch z = [x_s; x_t]   (stop_gradient),

computed as ``bw = 2 / (N - 1) * sum_i ||z_i - mean(z)||^2`` (the same number, in O(N d)).

Estimators (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012), m = |x_s|, n = |x_t|:

* quadratic (unbiased, Eq. 3):
      MMD_u^2 = 1/(m(m-1)) sum_{i != j} k(s_i, s_j) + 1/(n(n-1)) sum_{i != j} k(t_i, t_j)
              - 2/(mn) sum_{i, j} k(s_i, t_j)
  (can be slightly negative; for ``x_s = x_t`` it is -(2/m)(k(0) - mean_{i!=j} k) in [-2K/m, 0],
  K = number of kernels);
* linear (Lemma 14), m = n, ``pairs="disjoint"`` (default; also DAN's Eq. 5): pairs (2i, 2i+1),
  i < floor(m/2),
      MMD_l^2 = mean_i [ k(s_2i, s_2i+1) + k(t_2i, t_2i+1) - k(s_2i, t_2i+1) - k(s_2i+1, t_2i) ];
  ``pairs="circular"`` (Transfer-Learning-Library, ``tllib/alignment/dan.py``,
  ``_update_index_matrix(linear=True)``): the m overlapping pairs (i, i+1 mod m), i < m,
      MMD_c^2 = mean_i [ k(s_i, s_i+1) + k(t_i, t_i+1) - k(s_i, t_i+1) - k(s_i+1, t_i) ]
  (every sample used twice; the terms are no longer independent. TLlib builds the weights by
  assignment into a matrix, so at m = 2 its cross terms count once where this formula counts
  them twice.)

Bandwidth conventions (``bandwidth=``):

* ``"offdiag"`` (default; as above): ``k = sum_alpha exp(-||a - b||^2 / (alpha * bw))`` with bw the
  mean over pairs i != j of the joint batch;
* ``"tllib"`` (``tllib/modules/kernels.py``, ``GaussianKernel``): ``sigma_alpha^2 = alpha * mean_{i, j}
  ||z_i - z_j||^2`` over all N^2 pairs of the joint batch (the zero diagonal included), and
  ``k = sum_alpha exp(-||a - b||^2 / (2 sigma_alpha^2))``: the same form with
  ``bw = 2 (N - 1) / N * mean_{i != j} ||z_i - z_j||^2``, about twice as wide.

TLlib also adds the constant ``2 / (m - 1)`` to both estimators (no gradient; its value only);
jtl does not. JMMD replaces k by the product of the per-layer kernels, k(a, b) = prod_l k_l(a_l, b_l).
"""

import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float

DEFAULT_ALPHAS = (0.5, 1.0, 2.0)


BANDWIDTHS = ("offdiag", "tllib")
PAIRS = ("disjoint", "circular")


def _bandwidth(z, convention="offdiag"):
    """``mean_{i != j} ||z_i - z_j||^2 = 2 / (N - 1) sum_i ||z_i - mean(z)||^2`` ("offdiag"), or
    TLlib's ``2 mean_{i, j} ||z_i - z_j||^2 = 4 / N sum_i ||z_i - mean(z)||^2`` ("tllib")."""
    n = z.shape[0]
    zc = z - jnp.mean(z, axis=0)
    bw = 2.0 * jnp.sum(zc * zc) / (n - 1) if convention == "offdiag" else 4.0 * jnp.sum(zc * zc) / n
    return lax.stop_gradient(jnp.maximum(bw, jnp.finfo(z.dtype).tiny))


def _gauss_sum(sq_dist, bw, alphas):
    return sum(jnp.exp(-sq_dist / (a * bw)) for a in alphas)


def _flat(x):
    x = as_float(x)
    return x.reshape(x.shape[0], -1)


def _joint_mmd(layers_s, layers_t, alphas_per_layer, linear, pairs="disjoint", bandwidth="offdiag"):
    if pairs not in PAIRS:
        raise ValueError(f"MMD pairs must be one of {PAIRS} (got {pairs!r})")
    if bandwidth not in BANDWIDTHS:
        raise ValueError(f"MMD bandwidth must be one of {BANDWIDTHS} (got {bandwidth!r})")
    m, n = layers_s[0].shape[0], layers_t[0].shape[0]
    for xs, xt in zip(layers_s, layers_t):
        if xs.shape[0] != m or xt.shape[0] != n:
            raise ValueError("every layer must hold the same source and target samples (batch sizes differ)")
    if linear:
        if m != n or m < 2:
            raise ValueError(f"linear-time MMD needs equal source and target batches of >= 2 (got {m} and {n})")
        h = 2 * (m // 2)
        k_ss = k_tt = k_st = k_ts = 1.0
        for xs, xt, alphas in zip(layers_s, layers_t, alphas_per_layer):
            bw = _bandwidth(jnp.concatenate([xs, xt]), bandwidth)
            if pairs == "disjoint":
                s1, s2, t1, t2 = xs[0:h:2], xs[1:h:2], xt[0:h:2], xt[1:h:2]
            else:  # circular: (i, i + 1 mod m)
                s1, s2, t1, t2 = xs, jnp.roll(xs, -1, axis=0), xt, jnp.roll(xt, -1, axis=0)

            def k(a, b):
                return _gauss_sum(jnp.sum((a - b) ** 2, axis=-1), bw, alphas)

            k_ss, k_tt = k_ss * k(s1, s2), k_tt * k(t1, t2)
            k_st, k_ts = k_st * k(s1, t2), k_ts * k(s2, t1)
        return jnp.mean(k_ss + k_tt - k_st - k_ts)

    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD estimator needs >= 2 samples per domain (got {m} and {n})")
    kmat = 1.0
    for xs, xt, alphas in zip(layers_s, layers_t, alphas_per_layer):
        z = jnp.concatenate([xs, xt])
        z = z - jnp.mean(z, axis=0)  # translation invariant; reduces cancellation below
        sq = jnp.sum(z * z, axis=-1)
        d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
        kmat = kmat * _gauss_sum(d2, _bandwidth(z, bandwidth), alphas)
    k_ss, k_tt, k_st = kmat[:m, :m], kmat[m:, m:], kmat[:m, m:]
    within_s = (jnp.sum(k_ss) - jnp.trace(k_ss)) / (m * (m - 1))
    within_t = (jnp.sum(k_tt) - jnp.trace(k_tt)) / (n * (n - 1))
    return within_s + within_t - 2.0 * jnp.mean(k_st)


def mk_mmd(xs, xt, *, alphas=DEFAULT_ALPHAS, linear=False, pairs="disjoint", bandwidth="offdiag"):
    """Multi-kernel MMD^2 between source features ``xs`` (m, ...) and target features ``xt`` (n, ...).

    ``k(a, b) = sum_{alpha in alphas} exp(-||a - b||^2 / (alpha * bw))``, bw the mean pairwise
    squared distance of the joint batch (detached; ``bandwidth="tllib"``: TLlib's wider one);
    unbiased quadratic estimator, or the linear-time one with ``linear=True`` over disjoint
    pairs, or TLlib's circular pairs with ``pairs="circular"`` (see the module docstring for
    the formulas). TLlib's DAN example: ``alphas=(0.125, 0.25, 0.5, 1, 2)``, ``linear=True``.

    Long et al., "Learning Transferable Features with Deep Adaptation Networks", ICML 2015.
    """
    return _joint_mmd([_flat(xs)], [_flat(xt)], [tuple(alphas)], linear, pairs, bandwidth)


def jmmd(list_xs, list_xt, *, alphas_per_layer=None, linear=False, pairs="disjoint", bandwidth="offdiag"):
    """Joint MMD^2 over several layers (e.g. ``[features, softmax(logits)]``) of the same samples:

        k(a, b) = prod_l sum_{alpha in alphas_l} exp(-||a_l - b_l||^2 / (alpha * bw_l)),

    bw_l the (detached) mean pairwise squared distance of layer l over the joint batch;
    same estimators and options as :func:`mk_mmd`. ``alphas_per_layer`` defaults to (0.5, 1, 2)
    for every layer. (TLlib's JAN example, ``tllib/alignment/jan.py``, uses alphas 2^-3..2 on the
    features and a fixed-width kernel, sigma = 0.92, on the softmax outputs; a fixed width is not
    available here.)

    Long et al., "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017.
    """
    list_xs, list_xt = [_flat(x) for x in list_xs], [_flat(x) for x in list_xt]
    if len(list_xs) != len(list_xt) or not list_xs:
        raise ValueError(f"jmmd needs the same non-zero number of source and target layers "
                         f"(got {len(list_xs)} and {len(list_xt)})")
    if alphas_per_layer is None:
        alphas_per_layer = [DEFAULT_ALPHAS] * len(list_xs)
    alphas_per_layer = [tuple(a) for a in alphas_per_layer]
    if len(alphas_per_layer) != len(list_xs):
        raise ValueError(f"alphas_per_layer has {len(alphas_per_layer)} entries for {len(list_xs)} layers")
    return _joint_mmd(list_xs, list_xt, alphas_per_layer, linear, pairs, bandwidth)
