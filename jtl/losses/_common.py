"""Small helpers shared by the loss families (not part of the public API)."""

import jax.numpy as jnp
from jax import lax
from jax.scipy.special import entr


def as_float(x):
    """``x`` as a float array of at least float32 precision (bf16/f16/int -> f32, f64 stays f64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def prob_entropy(p, axis=-1):
    """Row entropy ``H(p) = -sum_c p_c log p_c`` of probability vectors (0 log 0 = 0)."""
    return jnp.sum(entr(p), axis=axis)


def domain_mean(values, weights=None):
    """Mean of per-sample ``values``; with ``weights``, ``sum(w v) / sum(w)`` (weights are constants)."""
    values = values.reshape(-1)
    if weights is None:
        return jnp.mean(values)
    w = jnp.asarray(weights, values.dtype).reshape(-1)
    if w.shape != values.shape:
        raise ValueError(f"weights have {w.shape[0]} entries for a batch of {values.shape[0]}")
    w = lax.stop_gradient(w)
    return jnp.sum(w * values) / jnp.sum(w)
