"""Supervised classification loss."""

import jax
import jax.numpy as jnp
import optax

from jtl.losses._common import as_float


def cross_entropy(logits, labels, *, label_smoothing=0.0):
    """Mean softmax cross-entropy with integer labels and optional label smoothing:

        L = -1/B sum_i sum_c q_ic log softmax(z_i)_c,   q_i = (1 - eps) onehot(y_i) + eps / C.

    ``label_smoothing`` (eps) may be a traced value. Label smoothing: Szegedy et al.,
    "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    """
    z = as_float(logits)
    onehot = jax.nn.one_hot(jnp.asarray(labels), z.shape[-1], dtype=z.dtype)
    return jnp.mean(optax.softmax_cross_entropy(z, optax.smooth_labels(onehot, label_smoothing)))
