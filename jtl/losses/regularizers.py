"""Fine-tuning regularizers: stay close to the pretrained starting point.

All are pure functions of the current and the starting model's arrays.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

PyTree = Any


def l2sp(shared: PyTree, shared0: PyTree, new: PyTree | None = None, *, alpha: float = 0.01,
         beta: float = 0.01) -> jax.Array:
    """L2-SP (Li, Grandvalet & Davoine 2018):
    ``alpha/2 ||w_S - w_S^0||^2 + beta/2 ||w_new||^2``,

    ``w_S`` the parameters shared with the pretrained model (starting values
    ``w_S^0``), ``w_new`` the new head's.
    """
    sq = lambda t: sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(t))
    diff = jax.tree.map(lambda a, b: a - jax.lax.stop_gradient(b), shared, shared0)
    out = 0.5 * alpha * sq(diff)
    if new is not None:
        out = out + 0.5 * beta * sq(new)
    return out


def delta(feature_maps: Sequence[jax.Array], feature_maps0: Sequence[jax.Array],
          channel_weights: Sequence[jax.Array] | None = None) -> jax.Array:
    """DELTA's feature-map distance (Li et al. 2019):
    ``sum_j sum_c w_jc * mean_n ||FM_jc(x_n; w) - FM_jc(x_n; w^0)||_2^2``,

    ``FM_jc`` the c-th channel (NHWC: last axis) of the j-th chosen feature map, the
    norm over spatial positions. ``channel_weights`` are DELTA's attention weights
    ``w_jc`` (non-negative, e.g. a softmax of the loss increase when channel c is
    removed); ``None`` weighs every channel 1 (DELTA without attention).
    The starting model's maps ``FM(w^0)`` are constants (no gradient).
    """
    total = 0.0
    for j, (fm, fm0) in enumerate(zip(feature_maps, feature_maps0)):
        d = jnp.square(fm.astype(jnp.float32) - jax.lax.stop_gradient(fm0).astype(jnp.float32))
        per_channel = jnp.mean(jnp.sum(d.reshape(d.shape[0], -1, d.shape[-1]), axis=1), axis=0)  # (C,)
        w = 1.0 if channel_weights is None else channel_weights[j]
        total = total + jnp.sum(w * per_channel)
    return total


def bss(features: jax.Array, k: int = 1) -> jax.Array:
    """Batch Spectral Shrinkage (Chen et al. 2019): ``sum_{i=1}^k sigma_{-i}^2``,

    the squares of the k smallest singular values of the (batch x dim) feature
    matrix, whose components transfer worst.
    """
    s = jnp.linalg.svd(features.astype(jnp.float32), compute_uv=False)  # descending
    return jnp.sum(jnp.square(s[-k:]))


def lwf(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 2.0) -> jax.Array:
    """Learning without Forgetting's distillation (Li & Hoiem 2017):
    ``-T^2 mean_n sum_k softmax(y0_n / T)_k log softmax(y_n / T)_k``,

    ``y0`` the starting model's outputs on the old task (constants), ``y`` the
    current model's outputs through the old head, ``T`` the temperature.
    """
    t = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature)
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
    return -(temperature**2) * jnp.mean(jnp.sum(t * log_s, axis=-1))
