"""The DG model: the run's :class:`~jtl.models.transfer.TransferModel`, with MixStyle
(Zhou et al. 2021) in its ResNet backbone when ``dg.mixstyle`` names stages, Dropout
(``dg.dropout``) on the pooled feature before the head, and every BatchNorm on its running
averages with ``dg.freeze_bn`` (:mod:`jtl.dg.frozen_bn`).

None of these adds parameters: the variables are those of the plain classifier, so a DG run
is evaluated, predicted from and used as ``model.init`` as any classification run.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jtl.dg.frozen_bn import frozen_statistics
from jtl.errors import ConfigError
from jtl.models import family_of
from jtl.models.backbones import create_model
from jtl.models.layers import Dense
from jtl.models.transfer import TransferModel, backbone_options
from jtl.train.tasks import transfer_model


class MixStyleModel(TransferModel):
    """A classifier (no bottleneck, no extra heads) whose ResNet backbone mixes feature statistics
    after the stages ``mixstyle`` names, in train mode; ``mixstyle_options`` holds the backbone's
    ``mixstyle_p``, ``mixstyle_alpha`` and ``mixstyle_mode``. ``dropout``: in train mode the head
    reads ``Dropout(dropout)`` of the pooled feature (TLlib's DG classifier with frozen BatchNorm),
    which is then ``features["pooled"]``."""

    mixstyle: tuple[str, ...] = ()
    mixstyle_options: tuple[tuple[str, Any], ...] = ()
    dropout: float = 0.0

    def setup(self):
        mix = {"mixstyle": tuple(self.mixstyle), **dict(self.mixstyle_options)} if self.mixstyle else {}
        self.backbone = create_model(self.arch, None, dtype=self.dtype, **backbone_options(self), **mix)
        self.bottleneck = None
        self.head = Dense(self.num_classes, dtype=self.dtype)
        self.feature_dropout = nn.Dropout(self.dropout) if self.dropout else None

    def __call__(self, x, train: bool = False, return_features: bool = False):
        logits, feats = super().__call__(x, train=train, return_features=True)
        if train and self.feature_dropout is not None:
            pooled = self.feature_dropout(feats["pooled"], deterministic=False)
            logits, feats = self.head(pooled).astype(jnp.float32), {**feats, "pooled": pooled}
        return (logits, feats) if return_features else logits


def build_model(cfg) -> TransferModel:
    """The plain classifier, or :class:`MixStyleModel` with ``dg.mixstyle``, ``dg.dropout`` or
    ``dg.freeze_bn``."""
    d = cfg.dg
    if not (d.mixstyle or d.dropout or d.freeze_bn):
        return transfer_model(cfg)
    if not 0 <= d.dropout < 1:
        raise ConfigError(f"dg.dropout must be in [0, 1), got {d.dropout}")
    options = ()
    if d.mixstyle:
        options = _mixstyle_options(cfg)
    base = transfer_model(cfg, frozen=frozen_statistics(cfg))
    return MixStyleModel(arch=base.arch, num_classes=base.num_classes, dtype=base.dtype, frozen=base.frozen,
                         image_size=base.image_size, mixstyle=tuple(d.mixstyle), mixstyle_options=options,
                         dropout=float(d.dropout))


def _mixstyle_options(cfg) -> tuple:
    d = cfg.dg
    if family_of(cfg.model.name).name != "resnet":
        raise ConfigError(f"dg.mixstyle needs a ResNet-family model; {cfg.model.name} is "
                          f"{family_of(cfg.model.name).name}")
    stages = [f"layer{i + 1}" for i in range(len(family_of(cfg.model.name).archs[cfg.model.name]["stage_sizes"]))]
    bad = [s for s in d.mixstyle if s not in stages]
    if bad:
        raise ConfigError(f"dg.mixstyle: {cfg.model.name} has no stage {bad[0]!r}; its stages: {', '.join(stages)}")
    if d.mixstyle_mode not in ("random", "crossdomain"):
        raise ConfigError(f"dg.mixstyle_mode must be random or crossdomain, got {d.mixstyle_mode!r}")
    return (("mixstyle_p", float(d.mixstyle_p)), ("mixstyle_alpha", float(d.mixstyle_alpha)),
            ("mixstyle_mode", d.mixstyle_mode))
