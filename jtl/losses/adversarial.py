"""Domain-adversarial losses: DANN (Ganin et al., JMLR 2016) and CDAN (Long et al., NeurIPS 2018).

The discriminator is *not* part of these functions: the trainer owns it and
passes its logits. Typical use (one joint gradient step)::

    h = grl(features, coeff)                          # reversed gradient into the backbone
    d_s, d_t = disc(h_s), disc(h_t)                   # logits, shape (B,) or (B, 1)
    loss = dann(d_s, d_t)                             # the discriminator minimises it

For CDAN the discriminator sees the multilinear map of features and
(detached) class predictions, ``disc(grl(multilinear_map(f, logits)))``, and
CDAN+E weights samples with :func:`entropy_weights`.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float, domain_mean, prob_entropy


def dann(d_logits_source, d_logits_target, weights_source=None, weights_target=None):
    """DANN domain-classification loss, computed from discriminator logits (source = 1, target = 0):

        L = 1/2 [ BCE(D(f_s), 1) + BCE(D(f_t), 0) ]
          = 1/2 [ mean_i softplus(-z^s_i) + mean_j softplus(z^t_j) ],

    using ``-log sigmoid(z) = softplus(-z)`` and ``-log(1 - sigmoid(z)) = softplus(z)``
    (numerically stable). With per-sample weights each domain's mean becomes the
    weighted mean ``sum_i w_i l_i / sum_i w_i``; weights are constants (stop_gradient).

    Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016.
    """
    zs = as_float(d_logits_source).reshape(-1)
    zt = as_float(d_logits_target).reshape(-1)
    ls = domain_mean(jax.nn.softplus(-zs), weights_source)
    lt = domain_mean(jax.nn.softplus(zt), weights_target)
    return 0.5 * (ls + lt)


def cdan(d_logits_source, d_logits_target, weights_source=None, weights_target=None, *, normalize="domain"):
    """CDAN / CDAN+E loss: the DANN loss on the discriminator logits of the conditioned features
    ``T(f, g)`` (:func:`multilinear_map` or :func:`randomized_multilinear_map`), after :func:`grl`.

    ``normalize="domain"`` (default; the authors' code, thuml/CDAN ``pytorch/loss.py``, which
    normalises each domain's weights to sum 1): each domain's weighted mean, then their average,

        L = 1/2 [ sum_i w^s_i BCE(D(T(f^s_i, g^s_i)), 1) / sum_i w^s_i
                + sum_j w^t_j BCE(D(T(f^t_j, g^t_j)), 0) / sum_j w^t_j ].

    ``normalize="joint"`` (Transfer-Learning-Library, ``tllib/alignment/cdan.py``,
    ``ConditionalDomainAdversarialLoss``: weights normalised to mean 1 over the joint batch,
    then a mean BCE over it): one weighted mean over the joint batch ``[source; target]``,

        L = sum_k w_k BCE_k / sum_k w_k,   k over all m + n samples,

    which, without weights, is the joint mean ``(m mean_s + n mean_t) / (m + n)`` (equal to the
    default when m = n). With weights, the two differ: a confident domain weighs more in the
    joint mean. A missing domain's weights count as ones; weights are constants.

    CDAN: no weights. CDAN+E: ``w = entropy_weights(softmax(g))`` (per domain for "domain",
    over the joint batch for "joint" -- in the joint mean only the weights' ratios matter).

    Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018.
    """
    if normalize == "domain":
        return dann(d_logits_source, d_logits_target, weights_source, weights_target)
    if normalize != "joint":
        raise ValueError(f"cdan: normalize must be 'domain' or 'joint' (got {normalize!r})")
    zs = as_float(d_logits_source).reshape(-1)
    zt = as_float(d_logits_target).reshape(-1)
    losses = jnp.concatenate([jax.nn.softplus(-zs), jax.nn.softplus(zt)])
    if weights_source is None and weights_target is None:
        return jnp.mean(losses)
    ws = jnp.ones_like(zs) if weights_source is None else jnp.asarray(weights_source, zs.dtype).reshape(-1)
    wt = jnp.ones_like(zt) if weights_target is None else jnp.asarray(weights_target, zt.dtype).reshape(-1)
    return domain_mean(losses, jnp.concatenate([ws, wt]))


def multilinear_map(f, g, *, detach=True):
    """CDAN multilinear conditioning ``T(f, g) = f (x) softmax(g)``, flattened per sample:

        T(f, g)_b[i * C + c] = f_{b,i} * softmax(g_b)_c,      shape (B, D * C).

    ``g`` are the classifier logits; the predictions are detached (stop_gradient)
    unless ``detach=False``.
    """
    f = as_float(f)
    p = jax.nn.softmax(as_float(g), axis=-1)
    if detach:
        p = lax.stop_gradient(p)
    return (f[:, :, None] * p[:, None, :]).reshape(f.shape[0], -1)


def randomized_multilinear_map(f, g, rf, rg, *, detach=True):
    """CDAN randomized multilinear map, for large ``D * C``:

        T(f, g) = (f R_f) * (softmax(g) R_g) / sqrt(d),     shape (B, d),

    with fixed random matrices ``R_f`` (D, d) and ``R_g`` (C, d), entries with zero mean
    and unit variance (see :func:`randomized_multilinear_matrices`), sampled once and
    kept constant. Its inner products are unbiased for those of :func:`multilinear_map`.
    """
    f = as_float(f)
    p = jax.nn.softmax(as_float(g), axis=-1)
    if detach:
        p = lax.stop_gradient(p)
    rf, rg = lax.stop_gradient(as_float(rf)), lax.stop_gradient(as_float(rg))
    if rf.shape[1] != rg.shape[1]:
        raise ValueError(f"R_f has {rf.shape[1]} output columns and R_g {rg.shape[1]}: they must match")
    return (f @ rf) * (p @ rg) / math.sqrt(rf.shape[1])


def randomized_multilinear_matrices(key, feature_dim, num_classes, output_dim=1024):
    """Standard-normal ``(R_f, R_g)`` of shapes (feature_dim, output_dim), (num_classes, output_dim)."""
    kf, kg = jax.random.split(key)
    return (jax.random.normal(kf, (feature_dim, output_dim)), jax.random.normal(kg, (num_classes, output_dim)))


def entropy_weights(probs):
    """CDAN+E sample weights of one domain's predictions ``probs`` (B, C):

        w_i = 1 + exp(-H(p_i)),   H(p) = -sum_c p_c log p_c,   normalised to mean 1: w_i <- B w_i / sum_j w_j.

    Confident (low-entropy) samples weigh more. Detached (stop_gradient); pass one domain's
    predictions per call to :func:`cdan` as ``weights_source`` / ``weights_target``, or the joint
    batch's for ``cdan(..., normalize="joint")``, split at the source size. (The authors' code
    lets a reversed gradient reach the entropy; jtl and TLlib detach it.)
    """
    p = lax.stop_gradient(as_float(probs))
    w = 1.0 + jnp.exp(-prob_entropy(p))
    return w * (w.shape[0] / jnp.sum(w))
