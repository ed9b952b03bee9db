"""The model every recipe trains, in one parameter layout.

``TransferModel``: a backbone of any family (:mod:`jtl.models.backbones`) without its
classifier, an optional bottleneck, the classifier ``head``, and the extra heads that
loss pieces declare. Fine-tuning, linear probes, adaptation (and what comes next) all
store their parameters as::

    params/backbone/...        the family's network without its classifier (ported weights)
    params/bottleneck/...      adaptation's feature layer (absent when bottleneck_dim = 0)
    params/head/{kernel,bias}  the classifier on the pooled (or bottleneck) feature
    params/<name>/...          extra heads declared by loss pieces (discriminators, ...)

so any run can seed any other (``model.init``). :func:`to_transfer_layout` converts the
family's own layout (ported weights; runs written before this layout) into this one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jtl.models.backbones import create_model, family_of
from jtl.models.heads import Bottleneck, MLPHead
from jtl.models.layers import Dense

LAYOUT_KEYS = ("backbone", "bottleneck", "head")  # the model's own modules: no piece may declare a head of these names


class TransferModel(nn.Module):
    """backbone (headless) -> bottleneck (optional) -> ``head``, plus extra heads.

    ``heads`` holds ``(name, spec, input width)`` triples; ``spec`` has ``hidden`` (layers
    of ``disc_hidden`` units; 0: one linear layer) and ``outputs`` (an int, or ``"classes"``).
    ``frozen`` names the backbone's frozen sub-modules (the family's contract).
    """

    arch: str
    num_classes: int
    bottleneck_dim: int = 0
    heads: tuple[tuple[str, Any, int], ...] = ()
    disc_hidden: int = 1024
    dtype: Any = jnp.float32
    frozen: tuple[str, ...] = ()
    image_size: int = 0  # the input size fresh variables are made for, where the family needs it (0: its own)

    def setup(self):
        self.backbone = create_model(self.arch, None, dtype=self.dtype, **backbone_options(self))
        self.bottleneck = Bottleneck(self.bottleneck_dim, dtype=self.dtype) if self.bottleneck_dim else None
        self.head = Dense(self.num_classes, dtype=self.dtype)
        for name, spec, _ in self.heads:
            outputs = self.num_classes if spec.outputs == "classes" else int(spec.outputs)
            module = (Dense(outputs, dtype=self.dtype) if spec.hidden == 0 else
                      MLPHead((self.disc_hidden,) * spec.hidden, outputs, dtype=self.dtype))
            setattr(self, name, module)

    def __call__(self, x, train: bool = False, return_features: bool = False):
        """``logits`` or ``(logits, features)``: ``features`` holds the family's taps, ``pooled`` (the
        classifier's input: the bottleneck's output if there is one) and ``backbone_pooled``."""
        _, feats = self.backbone(x, train=train, return_features=True)
        f = self.bottleneck(feats["pooled"], train) if self.bottleneck is not None else feats["pooled"]
        taps = family_of(self.arch).taps
        taps = taps(self.arch) if taps is not None else [k for k in feats if k != "pooled"]
        feats = {**{k: feats[k] for k in taps}, "backbone_pooled": feats["pooled"], "pooled": f}
        logits = self.head(f).astype(jnp.float32)
        return (logits, feats) if return_features else logits

    def apply_head(self, name: str, x):
        return getattr(self, name)(x).astype(jnp.float32)

    def init_all(self, x):
        """Touches every module, extra heads included (for ``init``)."""
        out = self(x, train=False)
        for name, _, width in self.heads:
            out = out + jnp.sum(self.apply_head(name, jnp.zeros((x.shape[0], width), x.dtype)))
        return out


def backbone_options(model: TransferModel) -> dict:
    """The family module's options: its frozen parts, and the input size where the family needs it."""
    options = {"frozen": tuple(model.frozen)} if model.frozen else {}
    field = family_of(model.arch).image_size_field
    return {**options, field: model.image_size} if field and model.image_size else options


def is_transfer_layout(params) -> bool:
    return "backbone" in params


def to_transfer_layout(variables: dict, arch: str) -> dict:
    """Variables in the family's own layout (its classifier a top-level module, as ported
    weights and runs before this layout have it) -> ``{"params": {"backbone", "head"?}, ...}``.
    Variables already in the transfer layout are returned unchanged."""
    family = family_of(arch)
    if is_transfer_layout(variables["params"]):
        return variables
    out = {}
    for collection in ("params", "batch_stats"):
        tree = dict(variables.get(collection) or {})
        head = tree.pop(family.classifier, None)
        for extra in family.extra_classifiers:
            tree.pop(extra, None)
        out[collection] = {k: v for k, v in (("backbone", tree), ("head", head)) if v}
    return out


def initial_variables(model: TransferModel, key: jax.Array, sample, *, as_family: bool = False) -> dict:
    """``model``'s initial variables from ``key``, as numpy.

    ``as_family`` (a plain classifier: no bottleneck, no extra heads) draws the weights
    exactly as the family's own classifier module does (``create_model(arch, K).init(key,
    x)``, then :func:`to_transfer_layout`), so a seed gives the same network as that module
    (and as fine-tuning runs of earlier jtl). Otherwise every module is drawn by ``model.init``.
    """
    sample = jnp.asarray(sample)
    if model.bottleneck_dim or model.heads or not as_family:
        variables = jax.jit(lambda k: model.init(k, sample, method=TransferModel.init_all))(key)
    else:
        own = create_model(model.arch, model.num_classes, dtype=model.dtype, **backbone_options(model))
        variables = to_transfer_layout(dict(jax.jit(own.init)(key, sample)), model.arch)
    variables = jax.tree.map(np.asarray, dict(variables))
    variables.setdefault("batch_stats", {})
    variables["batch_stats"] = dict(variables["batch_stats"])
    return variables
