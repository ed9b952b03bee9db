"""Heads for transfer and adaptation: bottleneck, classifier, domain discriminator.

Initialised like PyTorch's ``nn.Linear`` (see :class:`jtl.models.layers.Dense`) unless a head
asks for Transfer-Learning-Library's (TLlib) normal initialisation (``init_std``). Heads that
only training applies (discriminators, MCD's second classifier) normalise with batch
statistics (:class:`BatchStatNorm`); the classifier, which evaluation applies too, keeps
running averages (:class:`jtl.models.layers.BatchNorm`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.models.layers import BatchNorm, Dense, per_member_op

Dtype = Any


class NormalDense(nn.Module):
    """``y = x W + b`` with ``W ~ N(0, std^2)`` and ``b = bias`` (TLlib's MDD heads: std 0.01,
    bias 0; its MDD bottleneck: std 0.005, bias 0.1)."""

    features: int
    std: float
    bias: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("kernel", nn.initializers.normal(self.std), (x.shape[-1], self.features), jnp.float32)
        b = self.param("bias", nn.initializers.constant(self.bias), (self.features,), jnp.float32)
        return per_member_op(lambda x, w, b: jnp.dot(x, w) + b)(*(a.astype(self.dtype) for a in (x, w, b)))


def dense(features: int, *, init_std: float = 0.0, bias: float = 0.0, dtype: Dtype = jnp.float32, name=None):
    """PyTorch-initialised :class:`Dense` (``init_std`` 0), or :class:`NormalDense`."""
    if init_std:
        return NormalDense(features, init_std, bias, dtype, name=name)
    return Dense(features, dtype=dtype, name=name)


class BatchStatNorm(nn.Module):
    """``(x - mean_B) / sqrt(var_B + eps) * scale + bias`` over the batch B (biased variance):
    PyTorch's ``BatchNorm1d`` in train mode, without running averages, for heads that only
    training applies."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        y = x.astype(jnp.float32)
        mean, var = jnp.mean(y, axis=0), jnp.var(y, axis=0)
        return ((y - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(x.dtype)


class Bottleneck(nn.Module):
    """``relu(BN(f W + b))``: the low-dimensional feature layer adaptation losses act on
    (256-d in DANN/CDAN/MDD's standard protocol). ``dropout`` > 0 appends ``Dropout`` (train
    mode); ``init_std`` / ``bias_init``: TLlib's MDD bottleneck (``tllib/alignment/mdd.py``,
    ``ImageClassifier``: N(0, 0.005) weights, bias 0.1, Dropout(0.5))."""

    features: int = 256
    dtype: Dtype = jnp.float32
    dropout: float = 0.0
    init_std: float = 0.0
    bias_init: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = dense(self.features, init_std=self.init_std, bias=self.bias_init, dtype=self.dtype, name="fc")(x)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn")(x)
        x = nn.relu(x).astype(jnp.promote_types(x.dtype, jnp.float32))
        return nn.Dropout(self.dropout, deterministic=not train)(x) if self.dropout else x


class MLPHead(nn.Module):
    """``Dense(hidden) -> [BN] -> ReLU -> ... -> Dense(out)``, with optional dropout.

    Defaults (no BatchNorm, no dropout) apply to any batch (source, target, interpolates)
    without touching statistics; as a domain discriminator (Ganin et al. 2016): two 1024-unit
    hidden layers, one logit. Options:

    - ``norm``: ``"none"``; ``"batch"``: :class:`BatchStatNorm` after each hidden Dense (TLlib's
      ``DomainDiscriminator(batch_norm=True)``); ``"running"``: BatchNorm with running averages,
      in train mode whenever the ``batch_stats`` collection is mutable (a train-mode forward);
    - ``dropout`` (train mode: whenever a ``dropout`` rng is given) after each hidden ReLU, or, with
      ``dropout_before``, before each hidden Dense (TLlib's MCD ``ImageClassifierHead``);
    - ``init_std``: N(0, init_std) kernels and zero biases (TLlib's MDD heads).
    """

    hidden: tuple[int, ...] = (1024, 1024)
    out: int = 1
    dtype: Dtype = jnp.float32
    norm: str = "none"
    dropout: float = 0.0
    dropout_before: bool = False
    init_std: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def drop(y):
            return nn.Dropout(self.dropout, deterministic=not self.has_rng("dropout"))(y) if self.dropout else y

        for i, h in enumerate(self.hidden):
            x = drop(x) if self.dropout_before else x
            x = dense(h, init_std=self.init_std, dtype=self.dtype, name=f"fc{i}")(x)
            if self.norm == "batch":
                x = BatchStatNorm(name=f"bn{i}")(x)
            elif self.norm == "running":
                train = self.is_mutable_collection("batch_stats")
                x = BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
            x = x if self.dropout_before else drop(x)
        return dense(self.out, init_std=self.init_std, dtype=self.dtype, name="out")(x).astype(jnp.float32)
