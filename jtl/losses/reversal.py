"""Gradient reversal (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016).

``grl(x, coeff)`` is the identity in the forward pass and multiplies the
incoming gradient by ``-coeff`` in the backward pass:

    R(x) = x,        dR/dx = -coeff * I.

Put it between the feature extractor and an adversarial head (domain
discriminator, MDD's auxiliary classifier, ...): the head then *minimises* its
loss while the features receive the reversed gradient and *maximise* it, so a
single joint gradient step implements the min-max game.
"""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def _reverse(x, coeff):
    return x


def _reverse_fwd(x, coeff):
    return x, coeff


def _reverse_bwd(coeff, g):
    flipped = jax.tree.map(lambda t: (-coeff).astype(t.dtype) * t, g)
    return flipped, jnp.zeros_like(coeff)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def grl(x, coeff=1.0):
    """Gradient reversal layer: identity forward, gradient times ``-coeff`` backward.

    Args:
      x: an array (or a pytree of arrays).
      coeff: scalar lambda >= 0 (may be a traced value, e.g. ``grl_coeff(progress)``).
        No gradient flows into ``coeff``.
    """
    return _reverse(x, jnp.asarray(coeff, dtype=jnp.result_type(float)))


def grl_coeff(progress, alpha=10.0, high=1.0, low=0.0):
    """Warm-start schedule of the reversal coefficient (Ganin et al. 2016, Sec. 5.2.2):

        lambda(p) = low + (high - low) * (2 / (1 + exp(-alpha * p)) - 1),

    with ``p`` in [0, 1] the training progress; lambda(0) = low, lambda(p) -> high.
    With the defaults this is the paper's ``2 / (1 + exp(-10 p)) - 1``.
    """
    p = jnp.asarray(progress, dtype=jnp.result_type(float))
    return low + (high - low) * (2.0 / (1.0 + jnp.exp(-alpha * p)) - 1.0)
