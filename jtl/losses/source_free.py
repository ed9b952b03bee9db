"""Source-free adaptation: losses on the unlabelled target alone, given a source model.

SHOT: Liang, Hu & Feng, "Do We Really Need to Access the Source Data? Source Hypothesis
Transfer for Unsupervised Domain Adaptation", ICML 2020 (its information maximisation is
:func:`jtl.losses.information_maximization`; its pseudo-labels are :func:`shot_pseudo_labels`,
trained on with :func:`jtl.losses.cross_entropy`).

NRC: Yang, Wang, van de Weijer, Herranz & Jui, "Exploiting the Intrinsic Neighborhood
Structure for Source-free Domain Adaptation", NeurIPS 2021 (:func:`nrc`, :func:`diversity`).

The memory banks these read (features and predictions of every target sample) are
arguments: the trainer keeps them in the train state (:mod:`jtl.train.bank`).
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float


def unit_rows(x, eps=1e-12):
    """Rows of ``x`` scaled to unit L2 length, ``x_i / max(||x_i||, eps)``."""
    x = as_float(x)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def shot_pseudo_labels(logits, features, *, rounds=1):
    """SHOT's self-supervised pseudo-labels of a whole target set (Liang et al. 2020, Sec. 3.2):

        f_i <- [f_i, 1] / ||[f_i, 1]||,          p_i = softmax(z_i)           (N samples, K classes)
        c_k = sum_i p_ik f_i / (sum_i p_ik + 1e-8)                  (prediction-weighted centroids)
        y_i = argmin_{k in K*} d(f_i, c_k),      d(a, b) = 1 - a.b / (||a|| ||b||)   (cosine)
        ``rounds`` times:  c_k = sum_i [y_i = k] f_i / (#{y_i = k} + 1e-8);  y_i as above

    ``K*`` is the set of classes that at least one sample predicts (``argmax_k p_ik``); a
    centroid that no sample is assigned to is the zero vector, at distance 1 from every
    sample. SHOT refines once (``rounds=1``). Returns int32 labels (N,); not differentiable.
    """
    z = lax.stop_gradient(as_float(logits))
    f = lax.stop_gradient(as_float(features))
    f = unit_rows(jnp.concatenate([f, jnp.ones((f.shape[0], 1), f.dtype)], axis=1))
    num_classes = z.shape[-1]
    p = jax.nn.softmax(z, axis=-1)
    predicted = jnp.sum(jax.nn.one_hot(jnp.argmax(p, axis=-1), num_classes, dtype=f.dtype), axis=0) > 0

    def nearest(weights):
        centroids = weights.T @ f / (jnp.sum(weights, axis=0)[:, None] + 1e-8)
        norms = jnp.linalg.norm(centroids, axis=-1)
        cos = (f @ centroids.T) / jnp.where(norms > 0, norms, 1.0)[None, :]
        return jnp.argmin(jnp.where(predicted[None, :], 1.0 - cos, jnp.inf), axis=-1)

    labels = nearest(p)
    for _ in range(rounds):
        labels = nearest(jax.nn.one_hot(labels, num_classes, dtype=f.dtype))
    return labels.astype(jnp.int32)


def nrc_neighbours(index, feature_bank, *, k=5, kk=5, r=0.1):
    """NRC's neighbours of the batch samples ``index`` (B,) and their affinities, from the bank
    ``F`` (N, d) of unit-length target features (Yang et al. 2021, Sec. 3.2-3.3):

        N_k(i)  = the k samples j != i of largest F_i . F_j                  (nearest neighbours)
        A_ij    = 1 if i is among the kk nearest of j, else r,   j in N_k(i)  (reciprocal: 1)
        E(i)    = the kk nearest m != j of each j in N_k(i)                   (expanded, k * kk)
        A_im    = r, and 0 where m = i,                          m in E(i)

    (reciprocity is tested against the kk-neighbourhood, as the authors' code does; the paper's
    k = kk makes the two the same). Returns ``(near (B, k), a_near (B, k), expanded (B, k*kk),
    a_expanded (B, k*kk))``, indices into the bank and their affinities, all constants.
    """
    bank = lax.stop_gradient(as_float(feature_bank))
    n = bank.shape[0]
    index = jnp.asarray(index)

    def top(sim, exclude, count):
        sim = jnp.where(jnp.arange(n) == exclude[..., None], -jnp.inf, sim)
        return lax.top_k(sim, count)[1]

    near = top(bank[index] @ bank.T, index, k)  # (B, k)
    expanded = top(bank[near] @ bank.T, near, kk)  # (B, k, kk): the kk nearest of each neighbour
    is_self = expanded == index[:, None, None]
    a_near = jnp.where(jnp.any(is_self, axis=-1), 1.0, r)
    a_expanded = jnp.where(is_self, 0.0, r)
    b = index.shape[0]
    return near, a_near, expanded.reshape(b, k * kk), jnp.broadcast_to(a_expanded, expanded.shape).reshape(b, k * kk)


def nrc(logits, index, feature_bank, score_bank, *, k=5, kk=5, r=0.1):
    """NRC's neighbourhood clustering loss on a target batch (Yang et al. 2021, Eq. 6-7):

        L = -1/B sum_i [ sum_{j in N_k(i)} A_ij S_j . p_i  +  sum_{m in E(i)} A_im S_m . p_i ],

    ``p_i = softmax(z_i)``, ``S`` the score bank (N, C: stored softmax predictions of every
    target sample), neighbours and affinities from the feature bank (:func:`nrc_neighbours`;
    both banks already hold this batch's rows). The banks are constants: the gradient flows
    through ``p_i`` only. The authors' code writes the same terms as ``kl_div(p, S)``, which
    differs from ``-S . p`` by a constant. NRC adds :func:`diversity`; its weight is the config's.
    """
    p = jax.nn.softmax(as_float(logits), axis=-1)
    scores = lax.stop_gradient(as_float(score_bank))
    near, a_near, expanded, a_expanded = nrc_neighbours(index, feature_bank, k=k, kk=kk, r=r)
    attract = lambda idx, a: jnp.sum(a * jnp.einsum("bjc,bc->bj", scores[idx], p), axis=-1)
    return -jnp.mean(attract(near, a_near) + attract(expanded, a_expanded))


def diversity(logits):
    """Negative entropy of the mean prediction, ``L = sum_c pbar_c log pbar_c`` with
    ``pbar = 1/B sum_i softmax(z_i)``, in [-log C, 0]: minimising it spreads the batch's
    predictions over the classes (NRC's L_div = KL(pbar || uniform) - log C; SHOT's L_div)."""
    logp = jax.nn.log_softmax(as_float(logits), axis=-1)
    log_pbar = jax.nn.logsumexp(logp, axis=0) - math.log(logp.shape[0])
    return jnp.sum(jnp.exp(log_pbar) * log_pbar)
