"""Adaptive Feature Norm (Xu et al., "Larger Norm More Transferable: An Adaptive Feature
Norm Approach for Unsupervised Domain Adaptation", ICCV 2019). Apply to each domain's
(bottleneck) features and add the two terms, ``afn(f_s) + afn(f_t)``, as the ``afn`` loss piece
and Transfer-Learning-Library do (``tllib/normalization/afn.py``, ``AdaptiveFeatureNorm``; its
example ``examples/domain_adaptation/image_classification/afn.py``). One call on the joint batch
``[f_s; f_t]`` would halve each sample's gradient (the mean runs over 2B samples)."""

import jax.numpy as jnp
from jax import lax

from jtl.losses._common import as_float


def _norms(f):
    f = as_float(f)
    return jnp.linalg.norm(f.reshape(f.shape[0], -1), axis=-1)


def afn(features, *, delta=1.0):
    """Stepwise AFN (SAFN): ``L = mean_i (stop_grad(||f_i||) + delta - ||f_i||)^2``.

    Its value is always ``delta^2``; its gradient ``-2 delta f_i / (B ||f_i||)`` enlarges
    every feature norm by about ``lr * 2 delta / B`` per step.
    """
    r = _norms(features)
    return jnp.mean((lax.stop_gradient(r) + delta - r) ** 2)


def hafn(features, radius):
    """Hard AFN (HAFN): ``L = (mean_i ||f_i|| - R)^2`` for a fixed radius R."""
    return (jnp.mean(_norms(features)) - radius) ** 2
