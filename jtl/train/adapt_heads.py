"""The adaptation model with switchable heads: jtl's by default, Transfer-Learning-Library's on request.

:class:`AdaptationModel` is a :class:`jtl.models.transfer.TransferModel` (same parameter layout:
``backbone/``, ``bottleneck/``, ``head/``, the pieces' extra heads) whose bottleneck, classifier and
extra heads follow the ``adapt.*`` switches below. With the defaults it builds exactly jtl's
modules (same names, same initialisation). TLlib paths are in its repository (thuml/Transfer-Learning-Library).

========================  ====================================================================
``adapt.bottleneck``      ``"bn_relu"``: ``Linear-BN-ReLU`` (TLlib's DANN/CDAN/... bottleneck);
                          ``"bn_relu_dropout"``: ``+ Dropout(0.5)``, weights N(0, 0.005), bias 0.1
                          (``tllib/alignment/mdd.py``, ``ImageClassifier``)
``adapt.classifier``      ``"linear"``: ``Dense(C)``, extra heads as their pieces declare;
                          ``"mlp"``: ``Linear(w)-ReLU-Dropout(0.5)-Linear(C)``, weights N(0, 0.01),
                          zero biases (TLlib's MDD main and adversarial heads, the same for both);
                          ``"mlp_bn"``: ``Dropout-Linear(w)-BN-ReLU-Dropout-Linear(w)-BN-ReLU-Linear(C)``,
                          dropout 0.5 (``tllib/alignment/mcd.py``, ``ImageClassifierHead``; MCD's
                          two classifiers). Not ``"linear"``: every extra head with one output per
                          class (MCD's ``head2``, MDD's ``adv``) is built the same way.
                          ``w`` = ``adapt.classifier_width`` (1024 in TLlib)
``adapt.disc_norm``       the domain discriminator (``disc``) between its hidden layers:
                          ``"none"`` (jtl); ``"batchnorm"`` (``Linear-BN-ReLU`` x2, TLlib's default);
                          ``"dropout"`` (``Linear-ReLU-Dropout(0.5)`` x2, TLlib's ``batch_norm=False``)
                          (``tllib/modules/domain_discriminator.py``)
========================  ====================================================================

``adapt.forward`` (``"joint"`` | ``"separate"``: each domain in its own forward pass, as TLlib's
DAN and FixMatch examples) is read by :func:`jtl.train.adapt.adaptation_forward`.
"""

from __future__ import annotations

import dataclasses

from jtl.errors import ConfigError
from jtl.models.backbones import create_model
from jtl.models.heads import Bottleneck, MLPHead
from jtl.models.layers import Dense
from jtl.models.transfer import TransferModel, backbone_options

BOTTLENECKS = {"bn_relu": {}, "bn_relu_dropout": {"dropout": 0.5, "init_std": 0.005, "bias_init": 0.1}}
CLASSIFIERS = ("linear", "mlp", "mlp_bn")
DISC_NORMS = {"none": {}, "batchnorm": {"norm": "batch"}, "dropout": {"dropout": 0.5}}
FORWARDS = ("joint", "separate")


def check_switches(adapt) -> None:
    """Each switch's value is one it knows (a one-line :class:`ConfigError` otherwise)."""
    for key, known in (("bottleneck", BOTTLENECKS), ("classifier", CLASSIFIERS), ("disc_norm", DISC_NORMS),
                       ("forward", FORWARDS)):
        if adapt[key] not in known:
            raise ConfigError(f"adapt.{key} must be one of {', '.join(known)}; got {adapt[key]!r}")
    if adapt.classifier_width <= 0:
        raise ConfigError(f"adapt.classifier_width must be positive, got {adapt.classifier_width}")


def classifier_head(style: str, width: int, outputs: int, dtype, *, evaluated: bool):
    """The classifier of ``style`` (see the module docstring). ``evaluated``: evaluation applies it
    (the model's ``head``), so its BatchNorm keeps running averages; extra heads use batch statistics."""
    if style == "mlp":
        return MLPHead((width,), outputs, dtype, dropout=0.5, init_std=0.01)
    if style == "mlp_bn":
        return MLPHead((width, width), outputs, dtype, norm="running" if evaluated else "batch", dropout=0.5,
                       dropout_before=True)
    return Dense(outputs, dtype=dtype)


class AdaptationModel(TransferModel):
    """:class:`TransferModel` with the ``adapt.*`` head switches (module docstring)."""

    bottleneck_style: str = "bn_relu"
    classifier: str = "linear"
    classifier_width: int = 1024
    disc_norm: str = "none"

    def setup(self):
        self.backbone = create_model(self.arch, None, dtype=self.dtype, **backbone_options(self))
        self.bottleneck = (Bottleneck(self.bottleneck_dim, dtype=self.dtype, **BOTTLENECKS[self.bottleneck_style])
                           if self.bottleneck_dim else None)
        self.head = classifier_head(self.classifier, self.classifier_width, self.num_classes, self.dtype,
                                    evaluated=True)
        for name, spec, _ in self.heads:
            setattr(self, name, self.extra_head(spec))

    def extra_head(self, spec):
        """A piece's declared head: a classifier-like one (one output per class) follows ``classifier``;
        the others are MLPs of ``disc_hidden`` units with ``disc_norm`` between layers."""
        if spec.outputs == "classes" and self.classifier != "linear":
            return classifier_head(self.classifier, self.classifier_width, self.num_classes, self.dtype,
                                   evaluated=False)
        outputs = self.num_classes if spec.outputs == "classes" else int(spec.outputs)
        if spec.hidden == 0:
            return Dense(outputs, dtype=self.dtype)
        norm = DISC_NORMS[self.disc_norm] if spec.outputs != "classes" else {}  # MDD's adversary is no discriminator
        return MLPHead((self.disc_hidden,) * spec.hidden, outputs, dtype=self.dtype, **norm)

    @classmethod
    def of(cls, base: TransferModel, adapt) -> "AdaptationModel":
        """``base``'s fields, with the switches of config section ``adapt``."""
        check_switches(adapt)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(TransferModel)
                  if f.name not in ("parent", "name")}
        return cls(**fields, bottleneck_style=adapt.bottleneck, classifier=adapt.classifier,
                   classifier_width=adapt.classifier_width, disc_norm=adapt.disc_norm)
