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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jtl import data as jdata
from jtl.errors import ConfigError
from jtl.models.backbones import num_features
from jtl.models.transfer import LAYOUT_KEYS, TransferModel
from jtl.optim import make_optimizer, make_schedule
from jtl.data.splits import run_fractions
from jtl.progress import phase
from jtl.train.adapt_heads import AdaptationModel
from jtl.train.adapt_pieces import VIEWS  # (importing adapt_pieces registers the adaptation pieces)
from jtl.train.pieces import Head, declared_heads, declared_phases, declared_views, get_piece
from jtl.train.state import TrainState, initial_state
from jtl.train.steps import make_loss_fn, make_train_step
from jtl.train.tasks import (
    NEW_PARAMS, check_batch_fits, check_divisible, check_num_classes, eval_iterators, load_source, normalization_of,
    normalize_on_device, run_classes, start_variables, train_iterator, train_rngs, transfer_model)


# ---------------------------------------------------------------------------------- the model
def model_heads(cfg) -> tuple[tuple[str, Head, int], ...]:
    """The extra heads the run's pieces declare, with their input widths."""
    heads = declared_heads(list(cfg.loss))
    bad = sorted(set(heads) & set(LAYOUT_KEYS))
    if bad:
        raise ConfigError(f"a loss piece declares a head named {bad[0]!r}, a name of the model's own modules")
    feature_dim = cfg.adapt.bottleneck_dim or num_features(cfg.model.name)
    opts = cfg.loss_options.to_dict()
    return tuple((name, h, h.width(opts, feature_dim, cfg.model.num_classes)) for name, h in sorted(heads.items()))


def build_model(cfg) -> TransferModel:
    """backbone -> bottleneck (``adapt.bottleneck_dim``; 0: none) -> head, plus the declared heads,
    each as the ``adapt.*`` head switches say (:mod:`jtl.train.adapt_heads`)."""
    base = transfer_model(cfg, bottleneck_dim=cfg.adapt.bottleneck_dim, heads=model_heads(cfg))
    return AdaptationModel.of(base, cfg.adapt)


def apply_head(model: TransferModel, params, name: str, x, rng=None):
    """Extra head ``name`` of ``model`` on inputs ``x``, with ``params`` (those being trained);
    ``rng``: its dropout key (train mode), if it has dropout."""
    return model.apply({"params": params}, name, x, method=TransferModel.apply_head, rngs=train_rngs(rng))


def adaptation_forward(model: TransferModel, normalization: dict | None, views=(), uses_target: bool = True,
                       separate: bool = False):
    """``forward(variables, batch, train, rng=None) -> (out, batch_stats)`` of an adaptation model,
    without data: one pass over ``[x_s; x_t; view_1(x_t); ...]`` (BatchNorm statistics over all of
    them), ``out`` = ``logits``, ``logits_t``, ``f_s``, ``f_t``, ``logits_t_<view>`` and
    ``features``; a batch without ``image_t`` is evaluated on one domain. ``views`` name
    :data:`jtl.train.adapt_pieces.VIEWS`; without ``uses_target`` the target never enters.
    ``separate`` (``adapt.forward="separate"``, TLlib's DAN and FixMatch): in train mode each of
    those parts is its own pass, in that order, so BatchNorm normalises each domain with its own
    statistics and updates its running averages once per part."""

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
        if train and separate:
            (logits, feats), stats = _separate_passes(model, variables, [p for p in parts if p.shape[0]], rng)
        elif train:
            (logits, feats), upd = model.apply(variables, x, train=True, return_features=True, mutable=["batch_stats"],
                                               rngs=train_rngs(rng))
            stats = upd.get("batch_stats", variables["batch_stats"])
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


def _separate_passes(model, variables, parts, rng):
    """Train-mode passes over ``parts`` one after another, threading the BatchNorm statistics;
    ``(logits, {"pooled"})`` concatenated in order, and the final statistics."""
    stats, logits, pooled = variables["batch_stats"], [], []
    for i, x in enumerate(parts):
        key = None if rng is None else jax.random.fold_in(rng, 1000 + i)
        (lg, feats), upd = model.apply({**variables, "batch_stats": stats}, x, train=True, return_features=True,
                                       mutable=["batch_stats"], rngs=train_rngs(key))
        stats = upd.get("batch_stats", stats)
        logits.append(lg)
        pooled.append(feats["pooled"])
    return (jnp.concatenate(logits), {"pooled": jnp.concatenate(pooled)}), stats


# ---------------------------------------------------------------------------------- the task
class AdaptationTask:
    """Source labelled + target unlabelled training of a :class:`TransferModel` with a bottleneck
    and the extra heads the loss pieces declare."""

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
        self.head_regex = NEW_PARAMS
        src = load_source(cfg, cfg.data.train, cfg.data.train_split, budget=True)
        check_num_classes(cfg, src)
        check_batch_fits(cfg, src)
        self.classes = run_classes(cfg, src)
        # The target's labels are never trained on; they are mapped by name so that target
        # evaluation and analysis see the run's labels (a partial target is fine).
        with phase(f"loading {a.target}:{a.target_split}"):
            tgt = self.classes.align(jdata.load(a.target, a.target_split, seed=cfg.seed,
                                                on_error=cfg.data.on_error, **run_fractions(cfg, a.target)))
        with phase("normalisation statistics" if cfg.data.normalize == "dataset" else "input pipeline"):
            src_it = train_iterator(cfg, src, None if cfg.data.normalize == "none" else cfg.data.normalize)
        stats = (src_it.mean, src_it.std)  # the target is normalised like the source
        self.train_iterator = jdata.paired_iterator(src_it, train_iterator(cfg, tgt, stats))
        self.normalization = normalization_of(cfg, src_it)
        self.eval_iterators = eval_iterators(cfg, stats, self.classes)
        self.images_per_step = (2 if self.uses_target else 1) * cfg.batch_size

        self.model = build_model(cfg)
        x0 = np.zeros((1, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), np.float32)
        variables, _ = start_variables(cfg, self.model, x0, as_family=False)
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
    def apply_head(self, params, name, x, rng=None):
        return apply_head(self.model, params, name, x, rng)

    def forward(self, variables, batch, train: bool, rng=None):
        return adaptation_forward(self.model, self.normalization, self.views, self.uses_target,
                                  self.cfg.adapt.forward == "separate")(variables, batch, train, rng)

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
