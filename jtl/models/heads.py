"""Heads for transfer and adaptation: bottleneck, classifier, domain discriminator.

Initialised like PyTorch's ``nn.Linear`` (see :class:`jtl.models.layers.Dense`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.models.layers import BatchNorm, Dense

Dtype = Any


class Bottleneck(nn.Module):
    """``relu(BN(f W + b))``: the low-dimensional feature layer adaptation losses act on
    (256-d in DANN/CDAN/MDD's standard protocol)."""

    features: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Dense(self.features, dtype=self.dtype, name="fc")(x)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn")(x)
        return nn.relu(x).astype(jnp.promote_types(x.dtype, jnp.float32))


class MLPHead(nn.Module):
    """``Dense(hidden) -> ReLU -> ... -> Dense(out)``. No BatchNorm, so it can be applied
    to any batch (source, target, interpolates) without touching running statistics.

    As a domain discriminator (Ganin et al. 2016): two 1024-unit hidden layers, one logit.
    """

    hidden: tuple[int, ...] = (1024, 1024)
    out: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, h in enumerate(self.hidden):
            x = nn.relu(Dense(h, dtype=self.dtype, name=f"fc{i}")(x))
        return Dense(self.out, dtype=self.dtype, name="out")(x).astype(jnp.float32)
