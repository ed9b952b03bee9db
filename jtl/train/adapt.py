"""Unsupervised domain adaptation in the one trainer: the model and the task.

A method is a weighted list of loss pieces over one forward pass of the joint
batch ``[x_s; x_t]`` (BatchNorm statistics over both domains), e.g.::

    loss = (("ce", 1.0), ("cdan", 1.0), ("mcc", 0.5))

Everything method-specific is declared by the pieces (:mod:`jtl.train.adapt_pieces`,
or a researcher's own module): the extra heads the model gets, the extra views of the
target batch the forward pass computes, whether the target enters the forward pass at
all, and a step made of several updates (MCD's, Saito et al. 2018). This module reads
those declarations and names no piece. A multi-update step runs each phase's pieces on
its own trainable parameters, with its own optimizer state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

from jtl import data as jdata
from jtl.errors import ConfigError
from jtl.models import create_model
from jtl.models.heads import Bottleneck, MLPHead
from jtl.models.layers import Dense
from jtl.optim import make_optimizer, make_schedule
from jtl.progress import phase, say
from jtl.train.adapt_pieces import VIEWS  # (importing adapt_pieces registers the adaptation pieces)
from jtl.train.pieces import Head, declared_heads, declared_phases, declared_views, get_piece
from jtl.train.state import TrainState, initial_state
from jtl.train.steps import make_loss_fn, make_train_step
from jtl.train.tasks import (
    check_batch_fits, check_divisible, check_num_classes, eval_iterators, load_source, normalization_of,
    normalize_on_device, pretrained_variables, run_classes, train_iterator)
from jtl.weights import merge_pretrained

RESERVED = ("backbone", "bottleneck", "head")  # the model's own modules: no piece may declare a head of these names


# ---------------------------------------------------------------------------------- the model
class AdaptationModel(nn.Module):
    """backbone (headless) -> bottleneck (optional) -> classifier, plus the declared extra heads.

    Parameters: ``backbone/...`` (ported/pretrained weights go here), ``bottleneck``,
    ``head``, and one entry per extra head the pieces declare, under its name.
    ``heads`` holds ``(name, Head, input width)`` triples.
    """

    backbone_name: str
    num_classes: int
    bottleneck_dim: int = 256
    heads: tuple[tuple[str, Head, int], ...] = ()
    disc_hidden: int = 1024
    dtype: Any = jnp.float32

    def setup(self):
        self.backbone = create_model(self.backbone_name, None, dtype=self.dtype)
        self.bottleneck = Bottleneck(self.bottleneck_dim, dtype=self.dtype) if self.bottleneck_dim else None
        self.head = Dense(self.num_classes, dtype=self.dtype)
        for name, spec, _ in self.heads:
            outputs = self.num_classes if spec.outputs == "classes" else int(spec.outputs)
            module = (Dense(outputs, dtype=self.dtype) if spec.hidden == 0 else
                      MLPHead((self.disc_hidden,) * spec.hidden, outputs, dtype=self.dtype))
            setattr(self, name, module)

    def __call__(self, x, train: bool = False, return_features: bool = False):
        logits, feats = self.backbone(x, train=train, return_features=True)
        f = self.bottleneck(feats["pooled"], train) if self.bottleneck is not None else feats["pooled"]
        feats = {**feats, "backbone_pooled": feats["pooled"], "pooled": f}
        logits = self.head(f).astype(jnp.float32)
        return (logits, feats) if return_features else logits

    def apply_head(self, name: str, x):
        return getattr(self, name)(x).astype(jnp.float32)

    def init_all(self, x):
        out = self(x, train=False)
        for name, _, width in self.heads:
            out = out + jnp.sum(self.apply_head(name, jnp.zeros((x.shape[0], width), x.dtype)))
        return out


def model_heads(cfg) -> tuple[tuple[str, Head, int], ...]:
    """The extra heads the run's pieces declare, with their input widths."""
    heads = declared_heads(list(cfg.loss))
    bad = sorted(set(heads) & set(RESERVED))
    if bad:
        raise ConfigError(f"a loss piece declares a head named {bad[0]!r}, a name of the model's own modules")
    feature_dim = cfg.adapt.bottleneck_dim or create_model(cfg.model.name, None).num_features
    opts = cfg.loss_options.to_dict()
    return tuple((name, h, h.width(opts, feature_dim, cfg.model.num_classes)) for name, h in sorted(heads.items()))


def build_model(cfg) -> AdaptationModel:
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    return AdaptationModel(cfg.model.name, cfg.model.num_classes, cfg.adapt.bottleneck_dim, model_heads(cfg),
                           cfg.adapt.disc_hidden, dtype)


def apply_head(model: AdaptationModel, params, name: str, x):
    """Extra head ``name`` of ``model`` on inputs ``x``, with ``params`` (those being trained)."""
    return model.apply({"params": params}, name, x, method=AdaptationModel.apply_head)


def adaptation_forward(model: AdaptationModel, normalization: dict | None, views=(), uses_target: bool = True):
    """``forward(variables, batch, train, rng=None) -> (out, batch_stats)`` of an adaptation model,
    without data: one pass over ``[x_s; x_t; view_1(x_t); ...]`` (BatchNorm statistics over all of
    them), ``out`` = ``logits``, ``logits_t``, ``f_s``, ``f_t``, ``logits_t_<view>`` and
    ``features``; a batch without ``image_t`` is evaluated on one domain. ``views`` name
    :data:`jtl.train.adapt_pieces.VIEWS`; without ``uses_target`` the target never enters."""

    def forward(variables, batch, train: bool, rng=None):
        if "image_t" not in batch:  # evaluation on one domain
            logits, feats = model.apply(variables, normalize_on_device(batch["image"], normalization), train=False,
                                        return_features=True)
            return {"logits": logits, "features": feats}, variables["batch_stats"]
        xs, xt = normalize_on_device(batch["image_s"], normalization), normalize_on_device(batch["image_t"],
                                                                                          normalization)
        if not uses_target:
            xt = xt[:0]
        parts = [xs, xt] + [VIEWS[v](xt, jax.random.fold_in(rng, i + 1)) for i, v in enumerate(views)]
        x = jnp.concatenate(parts)
        if train:
            (logits, feats), upd = model.apply(variables, x, train=True, return_features=True, mutable=["batch_stats"])
            stats = upd["batch_stats"]
        else:
            logits, feats = model.apply(variables, x, train=False, return_features=True)
            stats = variables["batch_stats"]
        ns, nt = xs.shape[0], xt.shape[0]
        f = feats["pooled"]
        out = {"logits": logits[:ns], "logits_t": logits[ns:ns + nt], "f_s": f[:ns], "f_t": f[ns:ns + nt],
               "features": {"pooled": f[:ns]}}
        for i, v in enumerate(views):  # each extra view of the target: logits_t_<view>
            out[f"logits_t_{v}"] = logits[ns + (i + 1) * nt: ns + (i + 2) * nt]
        return out, stats

    return forward


# ---------------------------------------------------------------------------------- the task
class AdaptationTask:
    """Source labelled + target unlabelled training of an :class:`AdaptationModel`."""

    def __init__(self, cfg, mesh):
        self.cfg, a = cfg, cfg.adapt
        check_divisible(cfg, mesh)
        if cfg.freeze:
            raise ConfigError("freeze is not supported with domain adaptation (adapt.target); use lr multipliers")
        if cfg.grad_accum_steps != 1:
            raise ConfigError("grad_accum_steps > 1 is not supported with domain adaptation")
        names = list(cfg.loss)
        self.phases = declared_phases(tuple(cfg.loss.items()), cfg)  # None: one update of everything per step
        # Source-only training must not see the target, not even through BatchNorm statistics.
        self.uses_target = any(get_piece(n).needs_target for n in names)
        self.views = declared_views(names)
        self.head_regex = r"^(?!backbone/)"
        src = load_source(cfg, cfg.data.train, cfg.data.train_split, budget=True)
        check_num_classes(cfg, src)
        check_batch_fits(cfg, src)
        self.classes = run_classes(cfg, src)
        # The target's labels are never trained on; they are mapped by name so that target
        # evaluation and analysis see the run's labels (a partial target is fine).
        with phase(f"loading {a.target}:{a.target_split}"):
            tgt = self.classes.align(jdata.load(a.target, a.target_split, seed=cfg.seed,
                                                on_error=cfg.data.on_error))
        with phase("normalisation statistics" if cfg.data.normalize == "dataset" else "input pipeline"):
            src_it = train_iterator(cfg, src, None if cfg.data.normalize == "none" else cfg.data.normalize)
        stats = (src_it.mean, src_it.std)  # the target is normalised like the source
        self.train_iterator = jdata.paired_iterator(src_it, train_iterator(cfg, tgt, stats))
        self.normalization = normalization_of(cfg, src_it)
        self.eval_iterators = eval_iterators(cfg, stats, self.classes)
        self.images_per_step = (2 if self.uses_target else 1) * cfg.batch_size

        self.model = build_model(cfg)
        x0 = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), jnp.float32)
        variables = jax.jit(lambda k: self.model.init(k, x0, method=AdaptationModel.init_all))(
            jax.random.key(cfg.seed))
        variables = jax.tree.map(np.asarray, dict(variables))
        variables.setdefault("batch_stats", {})
        if cfg.model.init:
            variables = _load_backbone(cfg, variables)
        params = variables["params"]
        self.lr = make_schedule(cfg)
        txs = self.optimizers(cfg, params)
        opt_state = tuple(tx.init(params) for tx in txs) if self.phases else txs[0].init(params)
        self.state = initial_state(params, variables["batch_stats"], opt_state, cfg.seed, mesh)

    def optimizers(self, cfg, params) -> list[optax.GradientTransformation]:
        """One optimizer per phase (each trains only its phase's parameters), or the one optimizer."""
        if self.phases is None:
            return [make_optimizer(cfg, params)]
        return [make_optimizer(_only(cfg, ph.trainable), params) for ph in self.phases]

    # -- forward -----------------------------------------------------------------------------
    def apply_head(self, params, name, x):
        return apply_head(self.model, params, name, x)

    def forward(self, variables, batch, train: bool, rng=None):
        return adaptation_forward(self.model, self.normalization, self.views, self.uses_target)(
            variables, batch, train, rng)

    @staticmethod
    def prepare(batch: dict) -> dict:
        return {"image_s": batch["source"]["image"], "label": batch["source"]["label"],
                "image_t": batch["target"]["image"]}

    # -- steps -------------------------------------------------------------------------------
    def make_step(self, loss_fn, cfg):
        """One update of everything, or the declared phases, each with its own optimizer."""
        txs = self.optimizers(cfg, self.state.params)
        if self.phases is None:
            return make_train_step(loss_fn, txs[0])
        opts, total = cfg.loss_options.to_dict(), cfg.total_steps
        phase_fns = [jax.value_and_grad(make_loss_fn(self.forward, ph.loss, opts, total, self.head_regex,
                                                     apply_head=self.apply_head), has_aux=True)
                     for ph in self.phases]

        def step(state: TrainState, batch):
            key = jax.random.wrap_key_data(state.rng)
            key, sub = jax.random.split(key)
            params, stats, opt_states, metrics = state.params, state.batch_stats, list(state.opt_state), {}
            for i, (ph, grad_fn, tx) in enumerate(zip(self.phases, phase_fns, txs)):
                for r in range(ph.repeats):
                    k = jax.random.fold_in(sub, 100 * i + r)
                    (loss, (stats, m)), g = grad_fn(params, state.replace(batch_stats=stats), batch, k)
                    upd, opt_states[i] = tx.update(g, opt_states[i], params)
                    params = optax.apply_updates(params, upd)
                metrics.update({f"{ph.name}/{n}": v for n, v in m.items()})
                metrics[f"{ph.name}/loss"] = loss
            metrics["loss"] = metrics["A/loss"]
            new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=tuple(opt_states),
                                rng=jax.random.key_data(key))
            return new, metrics

        return step


def _only(cfg, trainable: str):
    """A copy of ``cfg`` whose optimizer freezes every parameter outside ``trainable``."""
    c = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)  # no deep copy: values may be tracers
    c.freeze = tuple(c.freeze) + (rf"^(?!{trainable[1:] if trainable.startswith('^') else trainable})",) \
        if trainable != r"." else tuple(c.freeze)
    return c


def _load_backbone(cfg, variables):
    """Pretrained weights: a registry name, port dir or .pth (backbone only), a fine-tuning
    run's workdir (backbone only) or an adaptation run's workdir (all but the extra heads)."""
    with phase(f"loading model.init {cfg.model.init}"):
        pre = pretrained_variables(cfg)
    if "backbone" in pre["params"]:
        # Another adaptation run (the source warm-up): keep its backbone, bottleneck and
        # classifier; the method's extra heads start fresh, and so do a bottleneck and
        # classifier of another width (the bottleneck ablation starts from one warm-up).
        merged, report = merge_pretrained(variables, pre, reinit=r"^(params|batch_stats)/(?!backbone/)")
        say(f"model.init {cfg.model.init}: {report.summary()}")
        return merged
    pretrained = {"params": {"backbone": pre["params"]}, "batch_stats": {"backbone": pre["batch_stats"]}}
    merged, report = merge_pretrained(variables, pretrained,
                                      reinit=r"^(params|batch_stats)/(?!backbone/)|^(params|batch_stats)/backbone/fc/")
    say(f"model.init {cfg.model.init}: {report.summary()}")
    return merged
