"""Frozen BatchNorm for domain-generalization runs (``dg.freeze_bn``; TLlib's ``--freeze-bn``).

- ``"stats"``: every BatchNorm normalises with its running mean and variance in training too,
  and never updates them; its scale and bias still train. This is TLlib's ``--freeze-bn``
  (Transfer-Learning-Library, ``examples/domain_generalization/image_classification/utils.py``,
  ``ImageClassifier.train``: every ``BatchNorm2d`` is put in eval mode, and the optimizer holds
  every parameter).
- ``"all"``: as ``"stats"``, and the scale and bias are frozen as well (an optimizer partition:
  ``optax.set_to_zero``, no optimizer state; :mod:`jtl.optim`).

The running averages are switched on through the backbone contract's ``frozen`` option
(:mod:`jtl.models.backbones`) with every part of the stem and the stages named: in the ResNet
family that option changes exactly the BatchNorms (convolutions and MixStyle keep training), so
``dg.freeze_bn`` is offered for that family only.
"""

from __future__ import annotations

import re

import ml_collections
from flax import traverse_util

from jtl.errors import ConfigError
from jtl.models import family_of

MODES = ("", "stats", "all")


def check(cfg) -> None:
    """One-line errors for ``dg.freeze_bn``."""
    mode = cfg.dg.freeze_bn
    if mode not in MODES:
        raise ConfigError(f"dg.freeze_bn must be '', 'stats' or 'all', got {mode!r}")
    if mode and family_of(cfg.model.name).name != "resnet":
        raise ConfigError(f"dg.freeze_bn needs a ResNet-family model (its frozen stages switch exactly the "
                          f"BatchNorms to running averages); {cfg.model.name} is {family_of(cfg.model.name).name}")


def frozen_statistics(cfg) -> tuple[str, ...]:
    """The backbone's ``frozen`` names that put every BatchNorm on its running averages: the
    stem's ``bn1`` and every stage (none without ``dg.freeze_bn``)."""
    if not cfg.dg.freeze_bn:
        return ()
    stages = family_of(cfg.model.name).archs[cfg.model.name]["stage_sizes"]
    return ("bn1",) + tuple(f"layer{i + 1}" for i in range(len(stages)))


def affine_regex(batch_stats) -> str:
    """A ``freeze`` regex matching exactly the scale and bias of the modules that hold
    BatchNorm statistics (``batch_stats``, in the transfer layout)."""
    modules = sorted({"/".join(path[:-1]) for path in traverse_util.flatten_dict(batch_stats)})
    return "^(?:" + "|".join(re.escape(m) for m in modules) + ")/(?:scale|bias)$"


def optimizer_config(cfg, batch_stats):
    """``cfg`` for :func:`jtl.optim.make_optimizer`: with ``dg.freeze_bn = "all"`` a copy whose
    ``freeze`` also holds :func:`affine_regex` (a copy as :func:`jtl.train.vector.with_values`
    makes one, so swept numbers may be tracers)."""
    if cfg.dg.freeze_bn != "all":
        return cfg
    c = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)
    c.freeze = tuple(c.freeze) + (affine_regex(batch_stats),)
    return c
