"""Depthwise convolution: the CPU lowering (shifted products) against XLA's grouped
convolution (the lowering used on GPU/TPU), values and gradients, and the per-platform choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.models.depthwise import depthwise_conv2d, depthwise_grouped, depthwise_shifted


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (7, 1, 3)])
def test_shifted_products_equal_grouped_convolution(k, stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, 11, 9, 6))
    w = jax.random.normal(jax.random.key(1), (k, k, 1, 6))
    ref = depthwise_grouped(x, w, stride, padding)
    np.testing.assert_allclose(depthwise_shifted(x, w, stride, padding), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(depthwise_conv2d(x, w, stride, padding), ref, rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.key(2), ref.shape)
    grad = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w, stride, padding) * cot), argnums=(0, 1))(x, w)
    for a, b in zip(grad(depthwise_shifted), grad(depthwise_grouped)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_lowers_to_shifted_products():
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
    hlo = jax.jit(lambda x, w: depthwise_conv2d(x, w, 1, 1)).lower(x, w).as_text()
    if jax.default_backend() == "cpu":
        assert "feature_group_count" not in hlo and "convolution" not in hlo
