"""Spectral losses: Batch Spectral Penalization and Batch Nuclear-norm Maximization."""

import jax
import jax.numpy as jnp

from jtl.losses._common import as_float


def _singular_values(x):
    x = as_float(x)
    return jnp.linalg.svd(x.reshape(x.shape[0], -1), compute_uv=False)


def bsp(features_s, features_t, k=1):
    """Batch Spectral Penalization: the top-k squared singular values of each domain's
    feature matrix (B, d),

        L = sum_{i <= k} sigma_i(F_s)^2 + sum_{i <= k} sigma_i(F_t)^2.

    Chen et al., "Transferability vs. Discriminability: Batch Spectral Penalization for
    Adversarial Domain Adaptation", ICML 2019.
    """
    ss, st = _singular_values(features_s), _singular_values(features_t)
    return jnp.sum(ss[:k] ** 2) + jnp.sum(st[:k] ** 2)


def bnm(target_logits):
    """Batch Nuclear-norm Maximization: ``L = -||A||_* / B`` with ``A = softmax(logits)`` (B, C).

    Range: ``-sqrt(min(B, C) / B) <= L <= -1 / sqrt(B C)`` (so within [-1, 0)). The upper
    end is reached by uniform predictions (rank one), the lower by one-hot predictions
    spread evenly over min(B, C) classes. (The authors' code uses the mean singular value,
    i.e. this value times B / min(B, C).)

    Cui et al., "Towards Discriminability and Diversity: Batch Nuclear-norm Maximization
    under Label Insufficient Situations", CVPR 2020.
    """
    a = jax.nn.softmax(as_float(target_logits), axis=-1)
    return -jnp.sum(jnp.linalg.svd(a, compute_uv=False)) / a.shape[0]
