"""One online update of TENT, EATA or SAR on a test batch, jit-compiled once.

``step(state, images, const) -> (state, logits, metrics)``: ``logits`` are the predictions
of the model as it enters the step (with test-batch statistics, where it has BatchNorm), which
is what the papers report; the update then changes the adapted parameters for later batches.
``const`` holds arrays that do not change over the stream (the initial state SAR recovers to,
EATA's Fisher and anchor), passed as arguments rather than baked into the program.

- **TENT** (Wang et al. 2021, "Tent: Fully Test-Time Adaptation by Entropy Minimization",
  ICLR): ``theta <- SGD(theta, grad 1/B sum_i H_i)``.
- **EATA** (Niu et al. 2022, ICML): the entropy of reliable, non-redundant samples, weighted
  by ``exp(E0 - H_i)`` (:func:`jtl.losses.eata_entropy`), plus ``beta`` times the Fisher
  regulariser (:func:`jtl.losses.fisher_penalty`). A batch with no selected sample changes
  nothing (no optimizer step, as the official code skips it). The prediction average
  ``m <- 0.9 m + 0.1 mean_{selected} p_i`` (the first batch with a selection sets ``m``).
- **SAR** (Niu et al. 2023, ICLR): sharpness-aware minimisation (Foret et al. 2021) of the
  reliable entropy: ``g = grad L(theta)`` over the samples with ``H_i < E0``,
  ``eps = rho g / ||g||``, the update uses ``grad L(theta + eps)`` over the samples reliable
  at both points. ``e <- 0.9 e + 0.1 L(theta + eps)`` (first value: itself); when ``e`` falls
  below ``reset_below`` (0.2) the parameters and optimizer state return to the source model's
  (model recovery). As in the official code, ``e`` itself is kept across a recovery.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jtl import losses as L
from jtl.losses.test_time import default_margin


@struct.dataclass
class AdaptState:
    """What changes along the stream: the adapted parameters, their optimizer state, EATA's
    prediction average (zeros: none yet), SAR's loss average (``loss_ema_set``: whether it has a
    value) and the number of SAR recoveries."""

    params: Any
    opt_state: Any
    probs_ema: jax.Array
    loss_ema: jax.Array
    loss_ema_set: jax.Array
    resets: jax.Array


def initial_state(params, tx: optax.GradientTransformation, num_classes: int) -> AdaptState:
    return AdaptState(params, tx.init(params), jnp.zeros((num_classes,), jnp.float32), jnp.zeros((), jnp.float32),
                      jnp.zeros((), bool), jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class Options:
    """Hyperparameters; defaults are the papers' (``e_margin`` as a fraction of ln C)."""

    lr: float = 1e-3
    momentum: float = 0.9
    margin_fraction: float = 0.4  # E0 = 0.4 ln C (EATA, SAR)
    d_margin: float = 0.4  # EATA's redundancy threshold eps (0.4 for 10 classes, 0.05 for ImageNet)
    fisher_alpha: float = 2000.0  # EATA's beta
    rho: float = 0.05  # SAR's SAM radius
    reset_below: float = 0.2  # SAR's recovery threshold e_0
    ema: float = 0.9  # EATA's and SAR's moving-average decay


def _where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _update(tx, grads, state: AdaptState):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state


def make_step(method: str, logits_fn: Callable, tx: optax.GradientTransformation, mask, opts: Options,
              num_classes: int):
    """The (unjitted) update step of ``method``; ``logits_fn(params, images) -> logits``; ``mask``:
    1 on adapted parameters, 0 on frozen ones (:func:`jtl.tta.params.adapt_mask`)."""
    e_margin = default_margin(num_classes, opts.margin_fraction)

    def tent(state: AdaptState, x, const):
        def loss(p):
            z = logits_fn(p, x)
            return L.entropy(z), z

        (value, z), g = jax.value_and_grad(loss, has_aux=True)(state.params)
        params, opt_state = _update(tx, g, state)
        return state.replace(params=params, opt_state=opt_state), z, {"loss": value, "selected": z.shape[0]}

    def eata(state: AdaptState, x, const):
        def loss(p):
            z = logits_fn(p, x)
            value = L.eata_entropy(z, state.probs_ema, e_margin=e_margin, d_margin=opts.d_margin)
            if opts.fisher_alpha:
                value = value + opts.fisher_alpha * L.fisher_penalty(p, const["anchor"], const["fisher"])
            return value, z

        (value, z), g = jax.value_and_grad(loss, has_aux=True)(state.params)
        sel, _ = L.eata_selection(z, state.probs_ema, e_margin=e_margin, d_margin=opts.d_margin)
        n = jnp.sum(sel)
        params, opt_state = _where(n > 0, _update(tx, g, state), (state.params, state.opt_state))
        p = jax.nn.softmax(z, axis=-1)
        batch_mean = jnp.sum(jnp.where(sel[:, None], p, 0.0), axis=0) / jnp.maximum(n, 1)
        had = jnp.any(state.probs_ema != 0)
        ema = jnp.where(had, opts.ema * state.probs_ema + (1 - opts.ema) * batch_mean, batch_mean)
        ema = jnp.where(n > 0, ema, state.probs_ema)
        new = state.replace(params=params, opt_state=opt_state, probs_ema=ema.astype(jnp.float32))
        return new, z, {"loss": value, "selected": n}

    def sar(state: AdaptState, x, const):
        def loss(p, where):
            z = logits_fn(p, x)
            return L.reliable_entropy(z, e_margin=e_margin, where=where), z

        (value, z), g = jax.value_and_grad(loss, has_aux=True)(state.params, None)
        sel = L.reliable_mask(z, e_margin=e_margin)
        g = jax.tree.map(lambda a, m: a * m, g, mask)
        scale = opts.rho / (optax.tree.norm(g) + 1e-12)
        perturbed = jax.tree.map(lambda p, a: p + scale * a, state.params, g)
        (value2, z2), g2 = jax.value_and_grad(loss, has_aux=True)(perturbed, sel)
        n2 = jnp.sum(sel & L.reliable_mask(z2, e_margin=e_margin))
        params, opt_state = _update(tx, g2, state)
        ema = jnp.where(state.loss_ema_set, opts.ema * state.loss_ema + (1 - opts.ema) * value2, value2)
        ema = jnp.where(n2 > 0, ema, state.loss_ema).astype(jnp.float32)
        ema_set = state.loss_ema_set | (n2 > 0)
        reset = ema_set & (ema < opts.reset_below)
        init = const["initial"]
        params, opt_state = _where(reset, (init.params, init.opt_state), (params, opt_state))
        new = state.replace(params=params, opt_state=opt_state, loss_ema=ema, loss_ema_set=ema_set,
                            resets=state.resets + reset.astype(jnp.int32))
        return new, z, {"loss": value, "selected": jnp.sum(sel), "loss_ema": ema, "reset": reset}

    return {"tent": tent, "eata": eata, "sar": sar}[method]
