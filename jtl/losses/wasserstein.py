"""WDGRL (Shen et al., "Wasserstein Distance Guided Representation Learning for Domain
Adaptation", AAAI 2018) with the WGAN-GP gradient penalty (Gulrajani et al., NeurIPS 2017).

Updates (the trainer implements the schedule): the critic maximises
``W = wdgrl_critic(c(f_s), c(f_t))`` under the penalty, i.e. minimises
``-W + gamma * gradient_penalty(c, f_s, f_t, key)`` for a few steps; the feature extractor
then minimises ``CE + lambda * W``. In one joint step the same follows from
``c(grl(f))``: the critic minimises ``-W + gamma GP`` and the features receive ``+W``.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float


def wdgrl_critic(critic_s, critic_t):
    """Empirical Wasserstein-1 estimate ``W = mean_i c(f^s_i) - mean_j c(f^t_j)`` from critic outputs."""
    return jnp.mean(as_float(critic_s)) - jnp.mean(as_float(critic_t))


def gradient_penalty(critic_fn, fs, ft, key):
    """WGAN-GP penalty on random interpolates between source and target features:

        f^_i = eps_i f^s_i + (1 - eps_i) f^t_i,   eps_i ~ U(0, 1) (``jax.random.uniform(key, (B, 1, ...))``),
        GP = mean_i (||grad_f c(f^_i)||_2 - 1)^2.

    ``fs`` and ``ft`` are detached: the penalty constrains the critic only (its gradient
    reaches the critic's parameters through ``critic_fn``, a closure over them). The critic
    must treat samples independently (no BatchNorm), as WGAN-GP requires, so that
    ``grad sum_i c(f^_i)`` gives every per-sample gradient at once.
    """
    fs, ft = lax.stop_gradient(as_float(fs)), lax.stop_gradient(as_float(ft))
    if fs.shape != ft.shape:
        raise ValueError(f"gradient_penalty needs equal source and target shapes (got {fs.shape} and {ft.shape})")
    eps = jax.random.uniform(key, (fs.shape[0],) + (1,) * (fs.ndim - 1), dtype=fs.dtype)
    interp = ft + eps * (fs - ft)
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(interp)
    sq = jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1)
    safe = jnp.where(sq > 0, sq, 1.0)  # sqrt has no gradient at 0
    norm = jnp.where(sq > 0, jnp.sqrt(safe), 0.0)
    return jnp.mean((norm - 1.0) ** 2)
