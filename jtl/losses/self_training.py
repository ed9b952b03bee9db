"""Confidence-thresholded pseudo-labelling (Sohn et al., "FixMatch: Simplifying
Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020)."""

import jax
import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float


def pseudo_label_loss_with_aux(weak_logits, strong_logits, *, threshold=0.95):
    """FixMatch unlabeled loss and its mask rate, as ``(loss, {"mask_rate": r})``
    (fits ``jax.value_and_grad(..., has_aux=True)``):

        q_i = stop_grad(softmax(z^weak_i)),  y^_i = argmax q_i,  m_i = [max q_i >= tau],
        L = 1/B sum_i m_i CE(z^strong_i, y^_i),     r = 1/B sum_i m_i.

    Normalised by the full batch size B, as in the paper (not by the number kept).
    """
    q = lax.stop_gradient(jax.nn.softmax(as_float(weak_logits), axis=-1))
    labels = jnp.argmax(q, axis=-1)
    mask = (jnp.max(q, axis=-1) >= threshold).astype(q.dtype)
    logp = jax.nn.log_softmax(as_float(strong_logits), axis=-1)
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    return jnp.mean(mask * ce), {"mask_rate": jnp.mean(mask)}


def pseudo_label_loss(weak_logits, strong_logits, *, threshold=0.95):
    """FixMatch unlabeled loss ``1/B sum_i [max q_i >= tau] CE(z^strong_i, argmax q_i)``,
    ``q = stop_grad(softmax(z^weak))``; see :func:`pseudo_label_loss_with_aux` for the mask rate."""
    return pseudo_label_loss_with_aux(weak_logits, strong_logits, threshold=threshold)[0]
