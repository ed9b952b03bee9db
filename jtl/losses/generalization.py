"""Domain-generalization losses over ``D`` source domains (DomainBed, Gulrajani & Lopez-Paz 2021).

Every function takes per-domain arrays stacked on a leading domain axis: ``logits`` (D, B, K),
``labels`` (D, B) int, ``features`` (D, B, F), or the per-domain risks ``risks`` (D,)
(:func:`domain_risks`: ``R_d = mean_i CE(logits[d, i], labels[d, i])``). All are pure.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# DomainBed's Gaussian-kernel bandwidths for MMD: k(x, y) = sum_g exp(-g ||x - y||^2).
MMD_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def _f32(x: jax.Array) -> jax.Array:
    """At least float32 (bfloat16 activations are upcast; float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def domain_risks(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``R_d = (1/B) sum_i -log softmax(logits[d, i])[labels[d, i]]``, shape (D,)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(_f32(logits), labels)
    return jnp.mean(ce, axis=-1)


def irm_penalty(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """IRMv1 (Arjovsky et al. 2019, "Invariant risk minimization", eq. IRMv1), DomainBed's
    unbiased estimate: per domain, the gradient of the risk w.r.t. a dummy classifier scale
    ``w`` at ``w = 1`` on two halves of the batch (even and odd rows),
    ``P_d = dR_d^even(w)/dw * dR_d^odd(w)/dw``, and ``mean_d P_d``.

    With ``z`` the logits and ``p = softmax(z)``, ``dR/dw|_{w=1} = (1/n) sum_i z_i . (p_i - y_i)``.
    """

    def scale_grad(z, y):
        return jax.grad(lambda w: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z * w, y)))(1.0)

    z = _f32(logits)
    g_even = jax.vmap(scale_grad)(z[:, 0::2], labels[:, 0::2])
    g_odd = jax.vmap(scale_grad)(z[:, 1::2], labels[:, 1::2])
    return jnp.mean(g_even * g_odd)


def vrex_penalty(risks: jax.Array) -> jax.Array:
    """V-REx (Krueger et al. 2021, "Out-of-distribution generalization via risk
    extrapolation", eq. 8): the variance of the domain risks, ``(1/D) sum_d (R_d - mean R)^2``."""
    return jnp.mean(jnp.square(risks - jnp.mean(risks)))


def annealed_weight(step: jax.Array, weight, anneal_steps: int) -> jax.Array:
    """DomainBed's penalty annealing for IRM and V-REx: 1 for the first ``anneal_steps``
    updates (step < anneal_steps), ``weight`` from then on."""
    return jnp.where(step >= anneal_steps, weight, 1.0)


def groupdro_weights(q: jax.Array, risks: jax.Array, eta) -> jax.Array:
    """Group DRO's online update (Sagawa et al. 2020, "Distributionally robust neural networks",
    Algorithm 1): exponentiated gradient ascent on the simplex,
    ``q_d <- q_d exp(eta R_d) / sum_d' q_d' exp(eta R_d')``, with the risks held constant."""
    logits = jnp.log(q) + eta * jax.lax.stop_gradient(risks)
    return jax.nn.softmax(logits)


def groupdro_loss(risks: jax.Array, q: jax.Array) -> jax.Array:
    """``sum_d q_d R_d`` with the weights ``q`` held constant (the model minimises the weighted risk)."""
    return jnp.sum(jax.lax.stop_gradient(q) * risks)


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def coral_pair(x: jax.Array, y: jax.Array) -> jax.Array:
    """DomainBed's CORAL distance (after Sun & Saenko 2016, "Deep CORAL"): the mean squared
    difference of the feature means plus that of the covariances,
    ``mean_k (mu_x - mu_y)_k^2 + mean_kl (C_x - C_y)_kl^2``, ``C = (X - mu)^T (X - mu) / (n - 1)``."""
    x, y = _f32(x), _f32(y)
    mx, my = jnp.mean(x, 0), jnp.mean(y, 0)
    cx = (x - mx).T @ (x - mx) / (x.shape[0] - 1)
    cy = (y - my).T @ (y - my) / (y.shape[0] - 1)
    return jnp.mean(jnp.square(mx - my)) + jnp.mean(jnp.square(cx - cy))


def gaussian_mmd_pair(x: jax.Array, y: jax.Array, gammas=MMD_GAMMAS) -> jax.Array:
    """Biased MMD^2 with a sum of Gaussian kernels (Li et al. 2018, "Domain generalization with
    adversarial feature learning"; DomainBed's bandwidths):
    ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)``, ``k(a, b) = sum_g exp(-g ||a - b||^2)``."""
    x, y = _f32(x), _f32(y)

    def kernel(a, b):
        d2 = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
        d2 = jnp.maximum(d2, 1e-30)
        return sum(jnp.exp(-g * d2) for g in gammas)

    return jnp.mean(kernel(x, x)) + jnp.mean(kernel(y, y)) - 2.0 * jnp.mean(kernel(x, y))


def pairwise_domain_distance(features: jax.Array, kind: str = "coral") -> jax.Array:
    """DomainBed's CORAL / MMD penalty: the mean of the pair distance (:func:`coral_pair` or
    :func:`gaussian_mmd_pair`) over the ``D (D - 1) / 2`` pairs of source domains; 0 for one domain."""
    pair = {"coral": coral_pair, "mmd": gaussian_mmd_pair}[kind]
    pairs = _pairs(features.shape[0])
    if not pairs:
        return jnp.zeros((), jnp.float32)
    return sum(pair(features[i], features[j]) for i, j in pairs) / len(pairs)

