"""jtl.models.attention: the fused formulation (tokens padded and masked) against a float64
numpy softmax attention, its gradient against the materialised formulation's (which the ViT
parity tests check against timm), and the dispatch (einsum off CUDA, fallback on refusal)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.models import attention


def numpy_attention(q, k, v):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("nhqk,nkhd->nqhd", w, v)


def qkv(tokens, heads=3, dim=16, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(kk, (2, tokens, heads, dim), jnp.float32).astype(dtype) for kk in keys]


@pytest.mark.parametrize("tokens", [197, 50, 16])  # padded to 200 and 56; 16 needs no padding
def test_fused_equals_numpy_attention(tokens):
    q, k, v = qkv(tokens)
    ref = numpy_attention(q, k, v)
    for fn in (lambda *a: attention.attend_fused(*a, "xla"), attention.attend_einsum):
        out = np.asarray(fn(q, k, v))
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("tokens", [197, 16])
def test_fused_gradient_equals_materialised(tokens):
    q, k, v = qkv(tokens, seed=1)
    w = jax.random.normal(jax.random.key(9), q.shape)  # a loss that weighs every output element

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    g_fused = jax.grad(loss(lambda *a: attention.attend_fused(*a, "xla")), (0, 1, 2))(q, k, v)
    g_einsum = jax.grad(loss(attention.attend_einsum), (0, 1, 2))(q, k, v)
    for a, b in zip(g_fused, g_einsum):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))
    # and the gradient is the finite difference of the loss along a random direction
    d = [jax.random.normal(jax.random.key(20 + i), q.shape) for i in range(3)]
    eps = 1e-2
    f = loss(lambda *a: attention.attend_fused(*a, "xla"))
    plus = f(*[a + eps * b for a, b in zip((q, k, v), d)])
    minus = f(*[a - eps * b for a, b in zip((q, k, v), d)])
    fd = (plus - minus) / (2 * eps)
    analytic = sum(jnp.sum(g * b) for g, b in zip(g_fused, d))
    assert abs(float(fd) - float(analytic)) <= 2e-3 * max(1.0, abs(float(analytic)))


def test_bfloat16_fused_close_to_float64():
    q, k, v = qkv(197, dtype=jnp.bfloat16, seed=2)
    ref = numpy_attention(q, k, v)
    out = np.asarray(attention.attend_fused(q, k, v, "xla"), np.float64)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-2


def test_dispatch_off_cuda_is_the_einsum():
    if attention.on_cuda():
        pytest.skip("runs on a CUDA default backend")
    q, k, v = qkv(197, dtype=jnp.bfloat16, seed=3)
    assert jnp.array_equal(attention.attend(q, k, v), attention.attend_einsum(q, k, v))


def test_dispatch_falls_back_when_the_kernel_refuses(monkeypatch):
    calls = []

    def refuse(*args):
        calls.append(args[-1])
        raise NotImplementedError("cuDNN refuses this shape")

    monkeypatch.setattr(attention, "on_cuda", lambda: True)
    monkeypatch.setattr(attention, "attend_fused", refuse)
    q, k, v = qkv(197, dtype=jnp.bfloat16, seed=4)
    out = attention.attend(q, k, v)
    assert calls == ["cudnn"]
    assert jnp.array_equal(out, attention.attend_einsum(q, k, v))
    # float32 never asks for the fused kernel
    calls.clear()
    attention.attend(*qkv(16))
    assert calls == []
