"""Scaled dot-product attention of the transformer families, per head::

    attend(q, k, v) = softmax(q k^T / sqrt(d_h)) v,   q, k, v: (N, T, heads, d_h)

Two formulations of the same sum, chosen when the program is traced:

- ``attend_einsum``: the logits and weights materialised, the softmax in float32 (timm's
  arithmetic; every parity test runs it). Used on CPU and TPU, and for float32 everywhere.
- ``attend_fused``: ``jax.nn.dot_product_attention`` (cuDNN's fused flash attention on an
  NVIDIA GPU). cuDNN refused ViT's 197 tokens (jax 0.11.2, H200), so the tokens are padded
  to a multiple of 8 and the padding masked by ``key_value_seq_lengths``; the padded query
  rows are dropped, so the result is the attention over the real tokens. Used for bfloat16
  and float16 on a GPU: ViT-B/16's bf16 train step at batch 256 went from 0.88x to 1.14x
  PyTorch AMP's (timm, fused ``scaled_dot_product_attention``) images/s on an H200
  (docs/benchmarks.md, GPU). Where cuDNN refuses a shape at trace time, the einsum runs.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.backend
import jax.numpy as jnp

FUSED_DTYPES = (jnp.bfloat16, jnp.float16)
TOKEN_MULTIPLE = 8  # tokens are padded to a multiple of this for the fused kernel


def head_major(a: jax.Array) -> jax.Array:
    """(N, T, heads, d_h) -> (N, heads, T, d_h): both attention products then have leading batch
    dimensions, which XLA:CPU runs without copies around each (one ViT-S/16 layer's attention,
    forward and backward at batch 32: 1.08 s -> 0.73 s on 2 loaded cores, the same sums to 6e-7)."""
    return a.transpose(0, 2, 1, 3)


def attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
    """``softmax(q k^T / sqrt(d_h))`` per head, (N, heads, T, T) from (N, T, heads, d_h) inputs:
    the logits in the compute dtype, the softmax in float32, the result back in the compute dtype."""
    logits = jnp.einsum("nhqd,nhkd->nhqk", head_major(q), head_major(k)) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)


def attend_einsum(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """``attention_weights(q, k) v``, (N, T, heads, d_h) in and out."""
    return head_major(jnp.einsum("nhqk,nhkd->nhqd", attention_weights(q, k), head_major(v)))


def attend_fused(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str | None = "cudnn") -> jax.Array:
    """``jax.nn.dot_product_attention`` (scale ``d_h^-1/2``) with the tokens padded to a multiple
    of ``TOKEN_MULTIPLE`` and masked; ``implementation``: "cudnn", "xla" or None (jax chooses)."""
    n, t = q.shape[:2]
    pad = (-t) % TOKEN_MULTIPLE
    if not pad:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    q, k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (q, k, v))
    lengths = jnp.full((n,), t, jnp.int32)
    y = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                     implementation=implementation)
    return y[:, :t]


@functools.cache
def on_cuda() -> bool:
    """jax's default backend is an NVIDIA GPU (where cuDNN's fused attention exists)."""
    if jax.default_backend() != "gpu":
        return False
    return "cuda" in str(jax.extend.backend.get_backend().platform_version).lower()


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The attention the transformer blocks run (see the module docstring for the choice)."""
    if q.dtype in FUSED_DTYPES and on_cuda():
        try:
            return attend_fused(q, k, v, "cudnn")
        except NotImplementedError:  # a shape or GPU cuDNN's kernel does not take: same sum, materialised
            pass
    return attend_einsum(q, k, v)
