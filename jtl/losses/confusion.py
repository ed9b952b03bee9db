"""Prediction-based target losses: Minimum Class Confusion, entropy, information maximization."""

import math

import jax
import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float, prob_entropy


def mcc(target_logits, *, temperature=2.5):
    """Minimum Class Confusion on target logits z (B, C):

        Y = softmax(z / T);  H_i = -sum_c Y_ic log Y_ic;
        W_ii = B (1 + exp(-H_i)) / sum_j (1 + exp(-H_j))     (detached);
        M = Y^T W Y  (C x C);   M~_jk = M_jk / sum_l M_lk    (class normalisation);
        L = 1/C sum_j sum_{k != j} |M~_jk|.

    Each column of M~ sums to one, so L = 1 - trace(M~)/C lies in [0, 1): 0 for confident
    predictions of distinct classes, (C - 1)/C for uniform predictions. A class no sample
    predicts at all (a zero column, possible only when softmax underflows) contributes 0.

    Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020.
    """
    z = as_float(target_logits)
    y = jax.nn.softmax(z / temperature, axis=-1)
    w = 1.0 + jnp.exp(-prob_entropy(lax.stop_gradient(y)))
    w = w * (y.shape[0] / jnp.sum(w))
    conf = (y * w[:, None]).T @ y
    col = jnp.sum(conf, axis=0, keepdims=True)
    ok = col > 0
    conf = jnp.where(ok, conf / jnp.where(ok, col, 1.0), 0.0)
    c = y.shape[-1]
    return (jnp.sum(conf) - jnp.trace(conf)) / c


def entropy(logits):
    """Mean prediction entropy ``L = 1/B sum_i H(softmax(z_i))``, in [0, log C].

    Entropy minimisation: Grandvalet & Bengio, "Semi-supervised Learning by Entropy
    Minimization", NeurIPS 2004.
    """
    logp = jax.nn.log_softmax(as_float(logits), axis=-1)
    return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def information_maximization(logits):
    """Information maximization ``L = 1/B sum_i H(p_i) - H(p_bar)``, ``p_bar = 1/B sum_i p_i``,
    in [-log C, log C]: confident individual predictions (low first term) that are diverse
    over the batch (high diversity H(p_bar)).

    Liang et al., "Do We Really Need to Access the Source Data? Source Hypothesis Transfer
    for Unsupervised Domain Adaptation" (SHOT), ICML 2020.
    """
    logp = jax.nn.log_softmax(as_float(logits), axis=-1)
    log_pbar = jax.nn.logsumexp(logp, axis=0) - math.log(logp.shape[0])
    diversity = -jnp.sum(jnp.exp(log_pbar) * log_pbar)
    return entropy(logits) - diversity
