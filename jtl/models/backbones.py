"""The backbone contract and the registry of backbone families.

A **family** (ResNet, ViT, ConvNeXt, ...) is one file in ``jtl/models/`` that calls
:func:`register_family` with a :class:`Family`: its architectures by name, the Flax
module that builds them, the name of its classifier sub-module, and (optionally) how
to port a PyTorch state dict. Every recipe (fine-tuning, linear probe, adaptation,
sweeps) uses a backbone only through this contract, so a new family needs no edit to
``jtl/train``.

**The module contract.** ``family.module(**spec, num_classes=K, dtype=..., frozen=...)``
is a ``flax.linen`` module with

- ``__call__(x, train=False, return_features=False)``: ``x`` is an (N, H, W, C) batch
  of normalised images; returns ``out`` or ``(out, features)``. ``out`` is the (N, K)
  logits of the classifier, or, with ``num_classes=None``, the pooled feature.
  ``features["pooled"]`` is the (N, D) float32 input of the classifier (global average
  pool, class token, ...); the other entries are intermediate outputs (stage outputs),
  of which ``family.taps(arch)`` names those feature-map regularizers (DELTA) use.
- ``num_features``: D.
- ``frozen``: names of top-level sub-modules all of whose parameters the optimizer
  freezes (:func:`jtl.optim.frozen_modules`). The family decides what that means for
  its normalisation: a BatchNorm family runs them on running averages in training, so
  a frozen part neither uses nor moves batch statistics; LayerNorm has no statistics.
- randomness in train mode (dropout, stochastic depth) comes from the ``"dropout"``
  rng stream, which the trainer provides.
- the classifier is the sub-module named ``family.classifier``, taking
  ``features["pooled"]``; the trainer keeps it as the model's ``head``
  (:mod:`jtl.models.transfer`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from flax import linen as nn

from jtl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Family:
    """A backbone family: ``archs`` maps an architecture name to the module's fields."""

    name: str
    module: Callable[..., nn.Module]
    archs: Mapping[str, Mapping[str, Any]]
    classifier: str = "fc"  # the classifier sub-module's name in the family's own (ported) layout
    # Further classifier-side modules of the family's own layout, not part of the backbone (DeiT's
    # distillation head_dist): dropped when the network becomes a TransferModel's backbone.
    extra_classifiers: tuple[str, ...] = ()
    # Porting from PyTorch (:mod:`jtl.weights.port`): the architectures that have a PyTorch
    # original, and the state-dict key of each variable path (collection dropped).
    torch_archs: tuple[str, ...] = ()
    torch_key: Callable[[tuple[str, ...]], str] | None = None
    # State-dict keys that are not learned and that the module computes itself (Swin's
    # relative_position_index, attn_mask), as regexes: dropped when porting.
    ignored_keys: tuple[str, ...] = ()
    # rename_keys(state_dict) -> state_dict in today's key names (published files with older ones).
    rename_keys: Callable[[dict], dict] | None = None
    input_size: int = 224  # an input size every architecture of the family accepts (for abstract builds)
    # resize(variables, arch, image_size) -> the variables of the same network at another input
    # size (ViT: position embeddings resampled as timm does); None: the variables fit any size.
    resize: Callable[[dict, str, int], dict] | None = None
    # The module field that makes fresh variables for a given input size (ViT: "img_size", the
    # position grid), so that a run's initial variables and resized pretrained ones agree.
    image_size_field: str | None = None
    # taps(arch) -> the feature names feature-map regularizers (DELTA) use by default, in depth
    # order; None: every entry of ``features`` but "pooled".
    taps: Callable[[str], tuple[str, ...]] | None = None
    # Layer-wise learning-rate decay (optim.layer_decay): layer_id(arch, path) numbers a backbone
    # parameter (path without "backbone/") from 0 (input end) to num_layers(arch).
    layer_id: Callable[[str, str], int] | None = None
    num_layers: Callable[[str], int] | None = None
    docs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # arch -> one line for the model table


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family``; its architecture names must be new."""
    for other in FAMILIES.values():
        if other.name != family.name:
            clash = sorted(set(other.archs) & set(family.archs))
            if clash:
                raise ValueError(f"family {family.name!r} redefines {clash[0]!r} of family {other.name!r}")
    FAMILIES[family.name] = family
    return family


def family_of(arch: str) -> Family:
    """The family that defines architecture ``arch`` (one-line error naming the known ones)."""
    for family in FAMILIES.values():
        if arch in family.archs:
            return family
    raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(arch_names())}")


LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def default_torch_key(path: tuple[str, ...]) -> str:
    """``("layer2_0", "bn1", "scale")`` -> ``"layer2.0.bn1.weight"``: ``name_N`` is ``name.N`` (an
    ``nn.Sequential``/``ModuleList`` index) and leaves take torch's names; other leaves
    (``cls_token``, ``pos_embed``, ``gamma``) keep theirs."""
    *modules, leaf = path
    names = [re.sub(r"^(.+)_(\d+)$", r"\1.\2", m) for m in modules]
    return ".".join(names + [LEAF_TO_TORCH.get(leaf, leaf)])


def arch_names() -> list[str]:
    return [a for family in FAMILIES.values() for a in family.archs]


def create_model(name: str, num_classes: int | None = 1000, **options: Any) -> nn.Module:
    """Build architecture ``name`` with a ``num_classes``-way classifier (``None``: none).

    ``options`` are module fields (``dtype``, ``frozen``, and the family's own). Example::

        model = create_model("resnet50", num_classes=10)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    """
    family = family_of(name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise ConfigError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    fields = {f.name for f in dataclasses.fields(family.module)} if dataclasses.is_dataclass(family.module) else None
    if fields is not None:
        unknown = set(options) - fields
        if unknown:
            raise ConfigError(f"unknown model option(s) {sorted(unknown)} for {name!r}")
    return family.module(**family.archs[name], num_classes=num_classes or None, **options)


def num_features(name: str) -> int:
    """D, the width of architecture ``name``'s pooled feature."""
    return create_model(name, None).num_features
