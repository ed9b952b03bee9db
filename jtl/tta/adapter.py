"""The online test-time adaptation loop: a model adapts to a stream of test batches.

``Adapter(model, variables, normalization, method, options)`` holds the source model, the
optax partition of what adapts (:mod:`jtl.tta.params`) and one jitted update step
(:mod:`jtl.tta.steps`); ``adapter.run(batches, episodic=...)`` walks a stream:

- **continual** (default): the adapted state carries from batch to batch (TENT's online setting);
- **episodic**: every batch starts from the source model (the update is undone after it).

Each batch is predicted by the model as it enters the step (with ``steps`` > 1 updates per batch:
by the model after ``steps - 1`` of them, as TENT's code does), so the online accuracy is that of
predictions made before the batch's labels or its last update could leak into them.

``norm_stats="batch"`` (TENT's choice) normalises BatchNorm layers with the statistics of the
test batch; ``"source"`` keeps the source model's running statistics. A family without
BatchNorm (LayerNorm) has no statistics to choose.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jtl.train.tasks import normalize_on_device
from jtl.tta import params as tta_params
from jtl.tta.steps import Options, initial_state, make_step


def make_logits_fn(model, batch_stats, normalization: dict | None, use_batch_stats: bool):
    """``logits_fn(params, images) -> logits`` (at least float32): uint8 images normalised on the device; BatchNorm
    on the batch's statistics (``use_batch_stats``, the running ones untouched) or the running ones."""

    def logits_fn(params, images):
        x = normalize_on_device(images, normalization)
        variables = {"params": params, "batch_stats": batch_stats}
        if use_batch_stats:
            logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        else:
            logits = model.apply(variables, x, train=False)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16 -> f32; f64 stays

    return logits_fn


def estimate_fisher(logits_fn, params, mask, batches: Iterable) -> dict:
    """EATA's diagonal Fisher information (Niu et al. 2022, Eq. 9): on unlabelled in-distribution
    batches x_b, with the model's own predictions y^_b as labels,

        F = 1/N sum_b (grad_theta CE(f_theta(x_b), y^_b))^2     (N batches, elementwise),

    the squared mean gradient of each batch, as the official code computes it; zero on frozen
    parameters."""

    def ce(p, x):
        z = logits_fn(p, x)
        y = jax.lax.stop_gradient(jnp.argmax(z, axis=-1))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=-1))

    grad = jax.jit(jax.grad(ce))
    total, n = jax.tree.map(jnp.zeros_like, params), 0
    for x in batches:
        g = grad(params, jnp.asarray(x))
        total = jax.tree.map(lambda t, a, m: t + m * a * a, total, g, mask)
        n += 1
    if n == 0:
        raise ValueError("no batch to estimate the Fisher information from")
    return jax.tree.map(lambda t: t / n, total)


class Adapter:
    """Test-time adaptation of one source model by ``method`` (``tent``, ``eata``, ``sar``).

    ``fisher_batches`` (EATA with ``fisher_alpha`` > 0): unlabelled in-distribution uint8 batches.
    ``compilations`` counts how often the update step was traced (once per input shape).
    """

    def __init__(self, model, variables: dict, normalization: dict | None, num_classes: int, method: str,
                 options: Options = Options(), *, norm_stats: str = "batch", adapt_params: str | None = None,
                 fisher_batches: Iterable | None = None):
        if norm_stats not in ("batch", "source"):
            raise ValueError(f"norm_stats must be 'batch' or 'source', got {norm_stats!r}")
        self.method, self.options = method, options
        batch_stats = variables.get("batch_stats") or {}
        params = jax.tree.map(jnp.asarray, variables["params"])
        self.uses_batch_stats = norm_stats == "batch" and bool(jax.tree.leaves(batch_stats))
        self.logits_fn = make_logits_fn(model, batch_stats, normalization, self.uses_batch_stats)
        self.labels = tta_params.adapt_labels(params, adapt_params)
        mask = tta_params.adapt_mask(self.labels)
        tx = tta_params.make_tta_optimizer(self.labels, options.lr, options.momentum)
        self.initial = initial_state(params, tx, num_classes)
        self.const = {"initial": self.initial}
        if method == "eata" and options.fisher_alpha:
            if fisher_batches is None:
                raise ValueError("EATA's Fisher regulariser needs fisher_batches (or fisher_alpha=0)")
            self.const["fisher"] = estimate_fisher(self.logits_fn, params, mask, fisher_batches)
            self.const["anchor"] = params
        step = make_step(method, self.logits_fn, tx, mask, options, num_classes)
        self.compilations = 0

        def counted(state, images, const):
            self.compilations += 1  # runs only while jax traces the step
            return step(state, images, const)

        self._step = jax.jit(counted)

    def run(self, batches: Iterable, *, episodic: bool = False, steps: int = 1) -> dict:
        """Adapt along ``batches`` (``(uint8 images, labels)`` pairs, or images alone).

        Returns ``logits`` (N, C) online predictions, ``labels`` (when given), per-batch
        ``loss`` and ``selected`` (samples the loss used), ``resets`` (SAR recoveries) and the
        final ``state``."""
        state = self.initial
        logits, labels, losses, selected, resets = [], [], [], [], 0
        for batch in batches:
            images, y = batch if isinstance(batch, tuple) else (batch, None)
            if episodic:
                state = self.initial
            for _ in range(steps):
                state, z, metrics = self._step(state, jnp.asarray(images), self.const)
                resets += int(metrics.get("reset", 0))
            logits.append(np.asarray(z))
            losses.append(float(metrics["loss"]))
            selected.append(int(metrics["selected"]))
            if y is not None:
                labels.append(np.asarray(y))
        return {"logits": np.concatenate(logits) if logits else np.zeros((0, 0), np.float32),
                "labels": np.concatenate(labels) if labels else None, "loss": np.asarray(losses),
                "selected": np.asarray(selected), "resets": resets, "state": state}
