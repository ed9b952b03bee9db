"""Timing on a shared, noisy machine: interleaved rounds and medians; matmul peaks; memory."""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rounds(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """``repeats`` rounds, each calling every function of ``fns`` once, in order; each returns the
    seconds it measured (``lambda: timed(f)``, or a worker's own timing). Interleaving makes a
    change of load hit every function alike. Returns ``{name: [seconds per round]}``."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            out[k].append(fn())
    return out


def median(values) -> float:
    return float(np.median(values))


def interleaved_ms(fa, fb, repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``fa`` and ``fb`` over ``repeats`` alternating calls (after one
    warm-up call each), so that load on a shared machine hits both alike."""
    fa(), fb()
    r = rounds({"a": lambda: timed(fa), "b": lambda: timed(fb)}, repeats)
    return 1e3 * median(r["a"]), 1e3 * median(r["b"])


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """XLA's f32 matmul throughput (FLOP/s), best of ``reps``."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best


def matmul_peak_bf16(n: int, reps: int = 5, inner: int = 10) -> float:
    """XLA's bf16 matmul throughput (FLOP/s, float32 accumulation) on random data: best of ``reps``
    rounds of ``inner`` back-to-back ``n x n x n`` products."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    f(a, b).block_until_ready()

    def rnd():
        outs = [f(a, b) for _ in range(inner)]
        jax.block_until_ready(outs)

    rnd()
    best = min(timed(rnd) for _ in range(reps))
    return 2 * n**3 * inner / best


def xla_peak_mib(compiled) -> float | None:
    """XLA's buffers for a compiled program (MiB): arguments + outputs + temporaries - aliased."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes) / 2**20


def device_peak_bytes() -> int | None:
    """The jax allocator's ``peak_bytes_in_use`` on the first local device (None on CPU)."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU devices have none
        stats = {}
    return stats.get("peak_bytes_in_use")


def machine() -> dict:
    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
