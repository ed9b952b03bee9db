"""Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV-W 2016)."""

import jax.numpy as jnp

from jtl.losses._common import as_float


def _flat(x):
    x = as_float(x)
    return x.reshape(x.shape[0], -1)


def _covariance(x):
    xc = x - jnp.mean(x, axis=0)
    return xc.T @ xc / (x.shape[0] - 1)


def coral(xs, xt, *, convention="paper"):
    """CORAL loss between source features ``xs`` (m, d) and target features ``xt`` (n, d), with
    unbiased covariances ``C = (X^T X - (1^T X)^T (1^T X) / n) / (n - 1)`` (from centred features):

    * ``convention="paper"`` (default; Sun & Saenko 2016, Eq. 1)::

          L = ||C_s - C_t||_F^2 / (4 d^2);

    * ``convention="tllib"`` (Transfer-Learning-Library's code, ``tllib/alignment/coral.py``,
      ``CorrelationAlignmentLoss``, whose docstring states the paper's formula): mean squared
      differences of the means and of the covariances,

          L = ||mu_s - mu_t||^2 / d + ||C_s - C_t||_F^2 / d^2,   mu = column means,

      i.e. 4x the paper's covariance term plus a first-moment term.
    """
    xs, xt = _flat(xs), _flat(xt)
    cs, ct = _covariance(xs), _covariance(xt)
    if cs.shape != ct.shape:
        raise ValueError(f"coral: source and target feature sizes differ ({cs.shape[0]} vs {ct.shape[0]})")
    d = cs.shape[0]
    if convention == "paper":
        return jnp.sum((cs - ct) ** 2) / (4.0 * d * d)
    if convention == "tllib":
        return jnp.mean((jnp.mean(xs, axis=0) - jnp.mean(xt, axis=0)) ** 2) + jnp.mean((cs - ct) ** 2)
    raise ValueError(f"coral: convention must be 'paper' or 'tllib' (got {convention!r})")
