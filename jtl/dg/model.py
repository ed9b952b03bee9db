"""The DG model: the run's :class:`~jtl.models.transfer.TransferModel`, with MixStyle
(Zhou et al. 2021) in its ResNet backbone when ``dg.mixstyle`` names stages.

MixStyle adds no parameters: the variables are those of the plain classifier, so a DG run
is evaluated, predicted from and used as ``model.init`` as any classification run.
"""

from __future__ import annotations

from typing import Any

from jtl.errors import ConfigError
from jtl.models import family_of
from jtl.models.backbones import create_model
from jtl.models.layers import Dense
from jtl.models.transfer import TransferModel, backbone_options
from jtl.train.tasks import transfer_model


class MixStyleModel(TransferModel):
    """A classifier (no bottleneck, no extra heads) whose ResNet backbone mixes feature statistics
    after the stages ``mixstyle`` names, in train mode; ``mixstyle_options`` holds the backbone's
    ``mixstyle_p``, ``mixstyle_alpha`` and ``mixstyle_mode``."""

    mixstyle: tuple[str, ...] = ()
    mixstyle_options: tuple[tuple[str, Any], ...] = ()

    def setup(self):
        options = {**backbone_options(self), "mixstyle": tuple(self.mixstyle), **dict(self.mixstyle_options)}
        self.backbone = create_model(self.arch, None, dtype=self.dtype, **options)
        self.bottleneck = None
        self.head = Dense(self.num_classes, dtype=self.dtype)


def build_model(cfg) -> TransferModel:
    """The plain classifier, or :class:`MixStyleModel` with ``dg.mixstyle``."""
    d = cfg.dg
    if not d.mixstyle:
        return transfer_model(cfg)
    if family_of(cfg.model.name).name != "resnet":
        raise ConfigError(f"dg.mixstyle needs a ResNet-family model; {cfg.model.name} is "
                          f"{family_of(cfg.model.name).name}")
    stages = [f"layer{i + 1}" for i in range(len(family_of(cfg.model.name).archs[cfg.model.name]["stage_sizes"]))]
    bad = [s for s in d.mixstyle if s not in stages]
    if bad:
        raise ConfigError(f"dg.mixstyle: {cfg.model.name} has no stage {bad[0]!r}; its stages: {', '.join(stages)}")
    if d.mixstyle_mode not in ("random", "crossdomain"):
        raise ConfigError(f"dg.mixstyle_mode must be random or crossdomain, got {d.mixstyle_mode!r}")
    base = transfer_model(cfg)
    options = (("mixstyle_p", float(d.mixstyle_p)), ("mixstyle_alpha", float(d.mixstyle_alpha)),
               ("mixstyle_mode", d.mixstyle_mode))
    return MixStyleModel(arch=base.arch, num_classes=base.num_classes, dtype=base.dtype, frozen=base.frozen,
                         image_size=base.image_size, mixstyle=tuple(d.mixstyle), mixstyle_options=options)
