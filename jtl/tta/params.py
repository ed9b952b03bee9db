"""Which parameters test-time adaptation updates, as an optax partition.

TENT, EATA and SAR adapt only the affine parameters of the normalisation layers
(BatchNorm's ``scale``/``bias``; LayerNorm's and GroupNorm's for families without
BatchNorm), everything else stays as trained. As in the trainer's freezing
(:mod:`jtl.optim`), each parameter gets one label from its path: ``"adapt"`` or
``"frozen"``; the optimizer is ``optax.multi_transform`` with ``optax.set_to_zero()``
on the frozen ones (they hold no optimizer state).

A normalisation layer is recognised by its parameters: a module whose parameters are
exactly ``{scale, bias}`` (a dense or convolutional layer has a ``kernel``).
``adapt_params=REGEX`` replaces that rule by a regex over parameter paths.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jtl.errors import JtlError
from jtl.optim import FROZEN, label_params, param_paths

ADAPT = "adapt"


def norm_affine_regex(params) -> str:
    """A regex matching exactly the ``scale``/``bias`` of every normalisation layer of ``params``."""
    modules: dict[tuple, set] = {}
    for key in traverse_util.flatten_dict(params):
        modules.setdefault(key[:-1], set()).add(key[-1])
    names = sorted("/".join(m) for m, leaves in modules.items() if leaves == {"scale", "bias"})
    if not names:
        raise JtlError("the model has no normalisation layer (no module with exactly scale and bias) to adapt; "
                       "name the parameters with --adapt-params REGEX")
    return "^(" + "|".join(re.escape(n) for n in names) + ")/(scale|bias)$"


def adapt_labels(params, adapt_params: str | None = None):
    """``params``-shaped pytree of ``"adapt"`` / ``"frozen"`` (every parameter exactly one rule)."""
    rx = adapt_params or norm_affine_regex(params)
    try:
        compiled = re.compile(rx)
    except re.error as e:
        raise JtlError(f"--adapt-params {rx!r} is not a regex: {e}") from None
    if not any(compiled.search(p) for p in param_paths(params)):
        raise JtlError(f"--adapt-params {rx!r} matches no parameter; parameters are named like "
                       f"{param_paths(params)[0]}")
    every = all(compiled.search(p) for p in param_paths(params))
    return label_params(params, ((ADAPT, rx, 1.0),), freeze=() if every else (f"^(?!.*(?:{rx}))",))


def adapt_mask(labels):
    """1.0 where a parameter adapts, 0.0 where it is frozen (same pytree structure)."""
    return jax.tree.map(lambda lab: jnp.float32(lab == ADAPT), labels)


def make_tta_optimizer(labels, lr: float, momentum: float) -> optax.GradientTransformation:
    """SGD (with ``momentum``; 0: plain) on the ``"adapt"`` parameters; the rest frozen."""
    sgd = optax.sgd(lr, momentum=momentum or None)
    return optax.multi_transform({ADAPT: sgd, FROZEN: optax.set_to_zero()}, labels)


def count(labels) -> tuple[int, int]:
    """(adapted, frozen) parameter tensors."""
    leaves = jax.tree.leaves(labels)
    return sum(lab == ADAPT for lab in leaves), sum(lab == FROZEN for lab in leaves)
