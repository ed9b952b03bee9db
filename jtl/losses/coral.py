"""Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV-W 2016)."""

import jax.numpy as jnp

from jtl.losses._common import as_float


def _covariance(x):
    x = as_float(x)
    x = x.reshape(x.shape[0], -1)
    xc = x - jnp.mean(x, axis=0)
    return xc.T @ xc / (x.shape[0] - 1)


def coral(xs, xt):
    """CORAL loss between source features ``xs`` (m, d) and target features ``xt`` (n, d):

        L = ||C_s - C_t||_F^2 / (4 d^2),   C = (X^T X - (1^T X)^T (1^T X) / n) / (n - 1),

    i.e. unbiased covariances (computed from centred features).
    """
    cs, ct = _covariance(xs), _covariance(xt)
    if cs.shape != ct.shape:
        raise ValueError(f"coral: source and target feature sizes differ ({cs.shape[0]} vs {ct.shape[0]})")
    d = cs.shape[0]
    return jnp.sum((cs - ct) ** 2) / (4.0 * d * d)
