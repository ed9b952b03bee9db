"""Shared helpers of the jtl.losses tests: float64 mode, jitted calls, finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtl.losses as L

@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- helpers

# Every call is jitted: compiling a whole loss once is several times faster on CPU than
# running it op by op (each eager op compiles on first use), and it exercises jit-compatibility.
def jgrad(f, **kw):
    return jax.jit(jax.grad(f, **kw))


class _Jitted:
    """``J.name(*arrays, **options)`` = ``jax.jit(partial(jtl.losses.name, **options))(*arrays)``."""

    def __getattr__(self, name):
        return lambda *args, **kw: _jitted(name, tuple(sorted(kw.items())))(*args)


@functools.cache
def _jitted(name, options):
    return jax.jit(functools.partial(getattr(L, name), **dict(options)))


J = _Jitted()



def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    for i, row in enumerate(z):
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out



def check_grad(f_jax, f_np, x, *, n_dirs=3, n_coords=2, h=1e-5, rtol=1e-6, atol=1e-9, seed=0):
    """jgrad(f_jax)(x) against central differences of f_np along random directions and coordinates."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(jgrad(f_jax)(jnp.asarray(x)))
    assert g.shape == x.shape and np.all(np.isfinite(g))
    rng = np.random.default_rng(seed)
    dirs = [rng.standard_normal(x.shape) for _ in range(n_dirs)]
    for k in rng.choice(x.size, size=min(n_coords, x.size), replace=False):
        e = np.zeros(x.size)
        e[k] = 1.0
        dirs.append(e.reshape(x.shape))
    for v in dirs:
        v = v / np.linalg.norm(v)
        fd = (f_np(x + h * v) - f_np(x - h * v)) / (2 * h)
        np.testing.assert_allclose(np.sum(g * v), fd, rtol=rtol, atol=atol)
    return g


def rand(*shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- gradient reversal

