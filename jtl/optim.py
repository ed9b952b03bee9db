"""Optimizers with parameter partitions: frozen / per-group learning rates, schedules.

Every parameter gets one label from its path (``"backbone/layer1_0/conv1/kernel"``):
``"frozen"`` if a ``freeze`` regex matches it, else the one group whose regex
matches it (none or several is an error naming the parameter). The optimizer
is ``optax.multi_transform`` over those labels: ``optax.set_to_zero()`` for
frozen parameters (so they hold no optimizer state) and, for each group, the
base optimizer with the learning rate scaled by the group's multiplier.

Schedules (``p = step / total_steps``):
``constant``; ``cosine``: ``lr * (1 + cos(pi p')) / 2`` after a linear warmup;
``step``: ``lr * factor^k`` after the k-th boundary; ``inv``: the adaptation
literature's ``lr * (1 + gamma p)^-power`` (Ganin et al. 2016, gamma 10, power 0.75).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import optax
from flax import traverse_util

from jtl.errors import ConfigError
from jtl.models.backbones import family_of

FROZEN = "frozen"


def param_paths(params) -> list[str]:
    return ["/".join(k) for k in traverse_util.flatten_dict(params)]


def label_params(params, groups: Sequence[tuple[str, str, float]], freeze: Sequence[str] = ()) -> Any:
    """A pytree like ``params`` holding each parameter's group name (or ``"frozen"``)."""
    frozen_res = [re.compile(r) for r in freeze]
    group_res = [(name, re.compile(rx)) for name, rx, _ in groups]
    paths = param_paths(params)
    for rx in frozen_res:  # a pattern of another layout would otherwise freeze nothing, silently
        if not any(rx.search(p) for p in paths):
            raise ConfigError(f"freeze regex {rx.pattern!r} matches no parameter; parameters are named like "
                              f"{paths[0]} ({len(paths)} in all)")
    labels = {}
    for key in traverse_util.flatten_dict(params):
        path = "/".join(key)
        if any(r.search(path) for r in frozen_res):
            labels[key] = FROZEN
            continue
        hits = [name for name, r in group_res if r.search(path)]
        if len(hits) != 1:
            what = "no optimizer group" if not hits else f"several optimizer groups ({', '.join(hits)})"
            raise ConfigError(f"parameter {path} matches {what}; fix optim.groups or freeze")
        labels[key] = hits[0]
    return traverse_util.unflatten_dict(labels)


def make_schedule(cfg) -> optax.Schedule:
    """Learning-rate schedule from ``cfg.optim`` and ``cfg.total_steps``."""
    o, total = cfg.optim, cfg.total_steps
    decay_steps = max(total - o.warmup_steps, 1)
    if o.schedule == "constant":
        main = optax.constant_schedule(o.lr)
    elif o.schedule == "cosine":
        main = optax.cosine_decay_schedule(o.lr, decay_steps)
    elif o.schedule == "step":
        main = optax.piecewise_constant_schedule(
            o.lr, {int(b * total) - o.warmup_steps: o.step_factor for b in o.step_boundaries}
        )
    elif o.schedule == "inv":
        main = lambda step: o.lr * (1.0 + o.inv_gamma * step / total) ** (-o.inv_power)
    else:
        raise ConfigError(f"unknown schedule {o.schedule!r}")
    if o.warmup_steps <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), main], [o.warmup_steps])


def nonzero(x) -> bool:
    """Whether an optional term is on. A traced value (a vectorized sweep's swept number) counts
    as on: the sweep groups only members that agree on which terms are on."""
    return isinstance(x, jax.core.Tracer) or bool(x)


def _base(cfg, lr_mult, decay: bool = True) -> optax.GradientTransformation:
    o = cfg.optim
    sched = make_schedule(cfg)
    lr = sched if isinstance(lr_mult, float) and lr_mult == 1.0 else (lambda step: lr_mult * sched(step))
    wd = o.weight_decay if decay else 0.0
    if o.name == "sgd":
        parts = [optax.add_decayed_weights(wd)] if nonzero(wd) else []
        return optax.chain(*parts, optax.sgd(lr, momentum=o.momentum if nonzero(o.momentum) else None,
                                             nesterov=o.nesterov))
    if o.name == "adam":
        parts = [optax.add_decayed_weights(wd)] if nonzero(wd) else []
        return optax.chain(*parts, optax.adam(lr))
    return optax.adamw(lr, weight_decay=wd)


def refine_labels(labels, cfg, arch: str):
    """Group labels -> ``"group|no_decay|layerK"`` labels where ``optim.no_decay`` or
    ``optim.layer_decay`` ask: a parameter matching a ``no_decay`` regex gets no weight decay;
    with layer decay ``d``, a parameter of layer ``k`` (the backbone family's numbering,
    0 = the input end, L + 1 = everything after the backbone) learns at ``lr d^(L + 1 - k)``
    (layer-wise learning-rate decay, Bao et al. 2022 / Clark et al. 2020)."""
    no_decay = [re.compile(r) for r in cfg.optim.no_decay]
    if not no_decay and not nonzero(cfg.optim.layer_decay):
        return labels
    family = family_of(arch)
    if nonzero(cfg.optim.layer_decay) and family.layer_id is None:
        raise ConfigError(f"optim.layer_decay: the {family.name} family numbers no layers; set optim.layer_decay=0")
    n = family.num_layers(arch) if nonzero(cfg.optim.layer_decay) else 0
    out = {}
    for key, label in traverse_util.flatten_dict(labels).items():
        path = "/".join(key)
        if label != FROZEN:
            if any(r.search(path) for r in no_decay):
                label += "|no_decay"
            if nonzero(cfg.optim.layer_decay):
                k = family.layer_id(arch, path.removeprefix("backbone/")) if path.startswith("backbone/") else n + 1
                label += f"|layer{n + 1 - k}"  # the exponent of the decay
        out[key] = label
    return traverse_util.unflatten_dict(out)


def make_optimizer(cfg, params) -> optax.GradientTransformation:
    """``multi_transform`` over the parameter labels, with clipping first if asked."""
    labels = refine_labels(label_params(params, cfg.optim.groups, cfg.freeze), cfg, cfg.model.name)
    mults = {name: float(mult) for name, _, mult in cfg.optim.groups}
    transforms = {FROZEN: optax.set_to_zero()}
    for label in sorted(set(jax.tree.leaves(labels)) - {FROZEN}):
        group, *tags = label.split("|")
        depth = next((int(t[5:]) for t in tags if t.startswith("layer")), 0)
        mult = mults[group] * (cfg.optim.layer_decay ** depth if depth else 1.0)
        transforms[label] = _base(cfg, mult, decay="no_decay" not in tags)
    for name in mults:  # a group no parameter falls in keeps its (empty) transform
        transforms.setdefault(name, _base(cfg, mults[name]))
    tx = optax.multi_transform(transforms, labels)
    if nonzero(cfg.optim.clip_norm):
        tx = optax.chain(optax.clip_by_global_norm(cfg.optim.clip_norm), tx)
    return tx


def frozen_modules(params, freeze: Sequence[str], prefix: str = "") -> tuple[str, ...]:
    """Top-level modules of ``params`` (``bn1``, ``layer2_0``, ...) all of whose parameters are
    frozen (``freeze`` regexes matched against ``prefix + path``, e.g. ``backbone/layer1_0/...``).

    The model runs them as its family's contract says (BatchNorm on running averages, so
    a frozen part neither uses nor moves batch statistics; :mod:`jtl.models.backbones`).
    """
    frozen_res = [re.compile(r) for r in freeze]
    tops: dict[str, bool] = {}
    for key in traverse_util.flatten_dict(params):
        frozen = any(r.search(prefix + "/".join(key)) for r in frozen_res)
        tops[key[0]] = tops.get(key[0], True) and frozen
    return tuple(sorted(t for t, f in tops.items() if f))
