"""Test-time adaptation losses: EATA's weighted reliable entropy and Fisher regulariser, SAR's
reliable entropy. (TENT's loss is the plain mean entropy, :func:`jtl.losses.entropy`.)

All take logits z (B, C); ``H_i = -sum_c p_ic log p_ic`` with ``p_i = softmax(z_i)``. Sample
selections and weights are constants of the gradient (computed from detached entropies), as in
the papers' implementations. A loss over an empty selection is 0 (its gradient too).
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float, prob_entropy


def _row_entropy(logits):
    logp = jax.nn.log_softmax(as_float(logits), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _masked_mean(values, mask):
    mask = lax.stop_gradient(mask.astype(values.dtype))
    return jnp.sum(mask * values) / jnp.maximum(jnp.sum(mask), 1.0)


def default_margin(num_classes: int, fraction: float = 0.4) -> float:
    """EATA's and SAR's entropy threshold ``E0 = 0.4 ln C``."""
    return fraction * math.log(num_classes)


def eata_selection(logits, probs_ema, *, e_margin, d_margin):
    """EATA's sample selection (Niu et al. 2022, Eq. 5-8) -> ``(mask, weights)``, both (B,), detached:

        reliable:      H_i < E0
        non-redundant: |cos(p_i, m)| < eps       (m: moving average of earlier predictions;
                                                  m = 0, no history yet, passes every sample)
        S_i = 1[reliable and non-redundant] / exp(H_i - E0).
    """
    z = lax.stop_gradient(as_float(logits))
    p = jax.nn.softmax(z, axis=-1)
    h = prob_entropy(p)
    m = jnp.asarray(probs_ema, p.dtype)
    cos = (p @ m) / jnp.maximum(jnp.linalg.norm(p, axis=-1) * jnp.linalg.norm(m), 1e-8)
    mask = (h < e_margin) & (jnp.abs(cos) < d_margin)
    return mask, jnp.where(mask, jnp.exp(-(h - e_margin)), 0.0)


def eata_entropy(logits, probs_ema, *, e_margin, d_margin):
    """EATA's sample-efficient entropy (Niu et al. 2022, "Efficient Test-Time Model Adaptation
    without Forgetting", ICML, Eq. 6-8): the mean of ``S_i H_i`` over the selected samples,

        L = sum_i S_i H_i / |{i : S_i > 0}|,   S_i from :func:`eata_selection` (constants).
    """
    mask, weights = eata_selection(logits, probs_ema, e_margin=e_margin, d_margin=d_margin)
    return _masked_mean(lax.stop_gradient(weights) * _row_entropy(logits), mask)


def fisher_penalty(params, anchor, fisher):
    """EATA's anti-forgetting regulariser (Niu et al. 2022, Eq. 9), over matching pytrees:

        R = sum_k F_k (theta_k - theta0_k)^2,

    ``F`` a diagonal Fisher information estimate, ``theta0`` the source parameters (constants).
    The loss weight (EATA's beta) is the caller's.
    """
    terms = jax.tree.map(lambda p, a, f: jnp.sum(lax.stop_gradient(f) * (p - lax.stop_gradient(a)) ** 2),
                         params, anchor, fisher)
    return sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def reliable_entropy(logits, *, e_margin, where=None):
    """SAR's reliable entropy (Niu et al. 2023, "Towards Stable Test-Time Adaptation in Dynamic
    Wild World", ICLR, Eq. 2): the mean entropy of the samples below the threshold,

        L = sum_i S_i H_i / sum_i S_i,   S_i = 1[H_i < E0] (and ``where_i``, if given; detached).

    SAR's second (sharpness-aware) pass keeps only the samples the first pass selected: ``where``.
    """
    h = _row_entropy(logits)
    mask = lax.stop_gradient(h) < e_margin
    if where is not None:
        mask = mask & where
    return _masked_mean(h, mask)


def reliable_mask(logits, *, e_margin):
    """``1[H_i < E0]`` (B,), detached: the samples :func:`reliable_entropy` keeps."""
    return lax.stop_gradient(_row_entropy(logits)) < e_margin
