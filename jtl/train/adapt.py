"""Unsupervised domain adaptation in the one trainer: model, loss pieces, step structures.

A method is a weighted list of loss pieces over one forward pass of the joint
batch ``[x_s; x_t]`` (BatchNorm statistics over both domains), e.g.::

    loss = (("ce", 1.0), ("cdan", 1.0), ("mcc", 0.5))

Pieces see ``f_s, f_t`` (bottleneck features), ``logits`` (source) and
``logits_t`` (target), and apply the extra heads the method needs through
``ctx.apply_head``: a domain discriminator (``dann``, ``cdan``, ``wdgrl``), an
adversarial classifier (``mdd``) or a second classifier (``mcd``). Adversarial
pieces put :func:`jtl.losses.grl` between features and head, with the
warm-up ``lambda_p = 2 / (1 + exp(-alpha p)) - 1`` (``p`` = training progress).

Step structures: ``single`` (one update of all parameters on the weighted sum)
serves every method except MCD, whose three-step update (Saito et al. 2018) is
declared in :func:`mcd_phases`: A) all parameters on source CE of both
classifiers; B) classifiers on CE minus the target discrepancy; C) feature
extractor on the discrepancy, ``adapt.mcd_generator_steps`` times. Each phase
has its own optimizer state over its trainable parameters.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

from jtl import data as jdata
from jtl import losses as L
from jtl.errors import ConfigError
from jtl.models import create_model
from jtl.models.heads import Bottleneck, MLPHead
from jtl.models.layers import Dense
from jtl.optim import make_optimizer, make_schedule
from jtl.progress import phase, say
from jtl.train.pieces import Context, get_piece, register
from jtl.train.state import TrainState

DISC_PIECES = ("dann", "cdan", "wdgrl")


# ---------------------------------------------------------------------------------- the model
class AdaptationModel(nn.Module):
    """backbone (headless ResNet) -> bottleneck (optional) -> classifier, plus extra heads.

    Parameters: ``backbone/...`` (ported/pretrained weights go here), ``bottleneck``,
    ``head``, and per method ``disc`` (domain discriminator), ``adv`` (MDD's
    adversarial classifier), ``head2`` (MCD's second classifier).
    """

    backbone_name: str
    num_classes: int
    bottleneck_dim: int = 256
    heads: tuple[str, ...] = ()
    disc_hidden: int = 1024
    dtype: Any = jnp.float32

    def setup(self):
        self.backbone = create_model(self.backbone_name, None, dtype=self.dtype)
        self.bottleneck = Bottleneck(self.bottleneck_dim, dtype=self.dtype) if self.bottleneck_dim else None
        self.head = Dense(self.num_classes, dtype=self.dtype)
        if "disc" in self.heads:
            self.disc = MLPHead((self.disc_hidden, self.disc_hidden), 1, dtype=self.dtype)
        if "adv" in self.heads:  # MDD's adversary must be as strong as an MLP (Zhang et al. 2019)
            self.adv = MLPHead((self.disc_hidden,), self.num_classes, dtype=self.dtype)
        if "head2" in self.heads:
            self.head2 = Dense(self.num_classes, dtype=self.dtype)

    def __call__(self, x, train: bool = False, return_features: bool = False):
        logits, feats = self.backbone(x, train=train, return_features=True)
        f = self.bottleneck(feats["pooled"], train) if self.bottleneck is not None else feats["pooled"]
        feats = {**feats, "backbone_pooled": feats["pooled"], "pooled": f}
        logits = self.head(f).astype(jnp.float32)
        return (logits, feats) if return_features else logits

    def apply_head(self, name: str, x):
        return getattr(self, name)(x).astype(jnp.float32)

    def init_all(self, x, disc_in: int):
        out = self(x, train=False)
        f = jnp.zeros((x.shape[0], self.bottleneck_dim or self.backbone.num_features), x.dtype)
        for name in self.heads:
            out = out + jnp.sum(self.apply_head(name, jnp.zeros((x.shape[0], disc_in)) if name == "disc" else f))
        return out


# ---------------------------------------------------------------------------------- loss pieces
def _coeff(ctx: Context, alpha: float, high: float = 1.0):
    return L.grl_coeff(ctx.progress, alpha=alpha, high=high)


def _both(ctx):
    return jnp.concatenate([ctx.out["f_s"], ctx.out["f_t"]]), ctx.out["f_s"].shape[0]


@register("dann")
def dann_piece(ctx: Context, *, alpha: float = 10.0, high: float = 1.0):
    """DANN: discriminator on ``grl(f)``; also reports the discriminator's accuracy.
    ``high`` is the final reversal coefficient (0: the discriminator learns, the features ignore it)."""
    f, n = _both(ctx)
    d = ctx.apply_head("disc", L.grl(f, _coeff(ctx, alpha, high)))[:, 0]
    acc = 0.5 * (jnp.mean(d[:n] > 0) + jnp.mean(d[n:] < 0))
    return L.dann(d[:n], d[n:]), {"disc_accuracy": acc}


def cdan_input(f, logits, *, randomized: bool, dim: int, seed: int = 0):
    """CDAN's conditioning ``f (x) softmax(g)``, or its randomized version of width ``dim``."""
    if not randomized:
        return L.multilinear_map(f, logits)
    rf, rg = L.randomized_multilinear_matrices(jax.random.key(seed), f.shape[-1], logits.shape[-1], dim)
    return L.randomized_multilinear_map(f, logits, rf, rg)


@register("cdan")
def cdan_piece(ctx: Context, *, alpha: float = 10.0, entropy: bool = True, randomized: bool = False,
               dim: int = 1024):
    """CDAN(+E): discriminator on ``grl(f (x) softmax(g))``; ``entropy`` weights by 1 + exp(-H)."""
    f, n = _both(ctx)
    g = jnp.concatenate([ctx.out["logits"], ctx.out["logits_t"]])
    h = cdan_input(f, g, randomized=randomized, dim=dim)
    d = ctx.apply_head("disc", L.grl(h, _coeff(ctx, alpha)))[:, 0]
    ws = wt = None
    if entropy:
        p = jax.nn.softmax(g)
        ws, wt = L.entropy_weights(p[:n]), L.entropy_weights(p[n:])
    acc = 0.5 * (jnp.mean(d[:n] > 0) + jnp.mean(d[n:] < 0))
    return L.cdan(d[:n], d[n:], ws, wt), {"disc_accuracy": acc}


@register("mmd")
def mmd_piece(ctx: Context, *, alphas=(0.5, 1.0, 2.0), linear: bool = False):
    """DAN: multi-kernel MMD between source and target bottleneck features."""
    return L.mk_mmd(ctx.out["f_s"], ctx.out["f_t"], alphas=tuple(alphas), linear=linear)


@register("jmmd")
def jmmd_piece(ctx: Context, *, linear: bool = False):
    """JAN: joint MMD over (features, softmax outputs)."""
    ps, pt = jax.nn.softmax(ctx.out["logits"]), jax.nn.softmax(ctx.out["logits_t"])
    return L.jmmd([ctx.out["f_s"], ps], [ctx.out["f_t"], pt], linear=linear)


@register("coral")
def coral_piece(ctx: Context):
    """Deep CORAL on the bottleneck features."""
    return L.coral(ctx.out["f_s"], ctx.out["f_t"])


@register("mdd")
def mdd_piece(ctx: Context, *, margin: float = 4.0, alpha: float = 10.0, high: float = 0.1):
    """MDD: the adversarial classifier on ``grl(f)`` against the main classifier's predictions.

    The reversal coefficient ramps to ``high`` = 0.1: with the margin's weight gamma on the
    source term, a full-strength reversal lets the features destroy source accuracy
    (measured: digits -> digits:mnistm fell below source-only at 1.0)."""
    f, n = _both(ctx)
    adv = ctx.apply_head("adv", L.grl(f, _coeff(ctx, alpha, high)))
    return L.mdd((ctx.out["logits"], ctx.out["logits_t"]), adv[:n], adv[n:], margin=margin)


@register("wdgrl")
def wdgrl_piece(ctx: Context, *, alpha: float = 10.0, gp_weight: float = 10.0):
    """WDGRL: the critic maximises ``W = mean c(f_s) - mean c(f_t)`` (minus the gradient
    penalty) while, through the reversal layer, the features minimise it."""
    f, n = _both(ctx)
    c = ctx.apply_head("disc", L.grl(f, _coeff(ctx, alpha)))[:, 0]
    critic = lambda x: ctx.apply_head("disc", x)[:, 0]
    w = L.wdgrl_critic(c[:n], c[n:])
    gp = L.gradient_penalty(critic, ctx.out["f_s"], ctx.out["f_t"], ctx.rng)
    return -w + gp_weight * gp, {"wasserstein": w}


@register("bsp")
def bsp_piece(ctx: Context, *, k: int = 1):
    """BSP: penalise the top-k singular values of each domain's features."""
    return L.bsp(ctx.out["f_s"], ctx.out["f_t"], k=k)


@register("afn")
def afn_piece(ctx: Context, *, delta: float = 1.0):
    """SAFN: enlarge feature norms step by step (both domains)."""
    f, _ = _both(ctx)
    return L.afn(f, delta=delta)


@register("mcc")
def mcc_piece(ctx: Context, *, temperature: float = 2.5):
    """MCC on the target predictions."""
    return L.mcc(ctx.out["logits_t"], temperature=temperature)


@register("bnm")
def bnm_piece(ctx: Context):
    """BNM on the target predictions."""
    return L.bnm(ctx.out["logits_t"])


@register("entropy")
def entropy_piece(ctx: Context):
    """Entropy minimisation on the target predictions."""
    return L.entropy(ctx.out["logits_t"])


@register("im")
def im_piece(ctx: Context):
    """Information maximisation on the target predictions (entropy minus diversity)."""
    return L.information_maximization(ctx.out["logits_t"])


@register("fixmatch")
def fixmatch_piece(ctx: Context, *, threshold: float = 0.95):
    """Self-training: pseudo-labels of the weak target view supervise the strong view."""
    loss, aux = L.pseudo_label_loss_with_aux(ctx.out["logits_t"], ctx.out["logits_t_strong"], threshold=threshold)
    return loss, aux


@register("ce2")
def ce2_piece(ctx: Context):
    """Source cross-entropy of MCD's second classifier."""
    logits = ctx.out["logits2"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ctx.batch["label"]))


@register("mcd")
def mcd_piece(ctx: Context):
    """MCD's classifier discrepancy on the target batch."""
    return L.mcd_discrepancy(ctx.out["logits_t"], ctx.out["logits2_t"])


# ---------------------------------------------------------------------------------- step structures
@dataclasses.dataclass(frozen=True)
class Phase:
    """One update inside a step: its loss pieces and the parameters it trains (regex)."""

    name: str
    loss: tuple[tuple[str, float], ...]
    trainable: str = r"."
    repeats: int = 1


def mcd_phases(loss: Sequence[tuple[str, float]], generator_steps: int) -> list[Phase]:
    """Saito et al. (2018): A) all on source CE of both classifiers (plus any other pieces);
    B) classifiers on CE - w*discrepancy; C) features on w*discrepancy, n times."""
    w = dict(loss)["mcd"]
    others = tuple((n, v) for n, v in loss if n not in ("mcd", "ce", "ce2"))
    ce = (("ce", 1.0), ("ce2", 1.0))
    return [
        Phase("A", ce + others),
        Phase("B", ce + (("mcd", -w),), r"^(head|head2)/"),
        Phase("C", (("mcd", w),), r"^(backbone|bottleneck)/", generator_steps),
    ]


def strong_augment(x: jax.Array, key: jax.Array) -> jax.Array:
    """A strong view on device (FixMatch-style): random shift up to 1/8 of the size
    (reflect padding), per-image brightness/contrast in [0.5, 1.5], and a cutout of half
    the image side filled with the mean."""
    n, h, w, _ = x.shape
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    pad = max(h // 8, 1)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    oy = jax.random.randint(k1, (n,), 0, 2 * pad + 1)
    ox = jax.random.randint(k2, (n,), 0, 2 * pad + 1)
    x = jax.vmap(lambda im, a, b: jax.lax.dynamic_slice(im, (a, b, 0), (h, w, x.shape[-1])))(xp, oy, ox)
    scale = jax.random.uniform(k3, (n, 2, 1, 1, 1), minval=0.5, maxval=1.5)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * scale[:, 0] + mean * scale[:, 1]
    size = max(h // 2, 1)
    cy = jax.random.randint(k4, (n,), 0, h)
    cx = jax.random.randint(k5, (n,), 0, w)
    yy, xx = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = (jnp.abs(yy - cy[:, None, None]) <= size // 2) & (jnp.abs(xx - cx[:, None, None]) <= size // 2)
    return jnp.where(inside[..., None], mean, x)


# ---------------------------------------------------------------------------------- the task
class AdaptationTask:
    """Source labelled + target unlabelled training of an :class:`AdaptationModel`."""

    def __init__(self, cfg, mesh):
        from jtl.train.tasks import (  # noqa: PLC0415
            check_batch_fits, check_divisible, check_num_classes, eval_iterators, load_source, normalization_of,
            run_classes, train_iterator)

        self.cfg, a = cfg, cfg.adapt
        check_divisible(cfg, mesh)
        if cfg.freeze:
            raise ConfigError("freeze is not supported with domain adaptation (adapt.target); use lr multipliers")
        if cfg.grad_accum_steps != 1:
            raise ConfigError("grad_accum_steps > 1 is not supported with domain adaptation")
        names = [n for n, _ in cfg.loss]
        for n in names:
            get_piece(n)
        heads = heads_of(names)
        self.structure = "mcd" if "mcd" in names else "single"
        # Source-only training must not see the target, not even through BatchNorm statistics.
        self.uses_target = any(n not in ("ce", "ce2") for n in names)
        self.strong = "fixmatch" in names
        self.head_regex = r"^(?!backbone/)"
        src = load_source(cfg, cfg.data.train, cfg.data.train_split, budget=True)
        check_num_classes(cfg, src)
        check_batch_fits(cfg, src)
        self.classes = run_classes(cfg, src)
        # The target's labels are never trained on; they are mapped by name so that target
        # evaluation and analysis see the run's labels (a partial target is fine).
        with phase(f"loading {a.target}:{a.target_split}"):
            tgt = self.classes.align(jdata.load(a.target, a.target_split, seed=cfg.seed,
                                                on_error=cfg.data.get("on_error", "raise")))
        with phase("normalisation statistics" if cfg.data.normalize == "dataset" else "input pipeline"):
            src_it = train_iterator(cfg, src, None if cfg.data.normalize == "none" else cfg.data.normalize)
        stats = (src_it.mean, src_it.std)  # the target is normalised like the source
        self.train_iterator = jdata.paired_iterator(src_it, train_iterator(cfg, tgt, stats))
        self.normalization = normalization_of(cfg, src_it)
        self.eval_iterators = eval_iterators(cfg, stats, self.classes)
        self.images_per_step = (2 if self.uses_target else 1) * cfg.batch_size

        dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
        self.model = AdaptationModel(cfg.model.name, cfg.model.num_classes, a.bottleneck_dim, heads,
                                     a.disc_hidden, dtype)
        feat_dim = a.bottleneck_dim or create_model(cfg.model.name, None).num_features
        cdan_opts = dict(cfg.loss_options.get("cdan", {}))
        disc_in = feat_dim
        if "cdan" in names:
            disc_in = cdan_opts.get("dim", 1024) if cdan_opts.get("randomized", False) else feat_dim * cfg.model.num_classes
        x0 = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), jnp.float32)
        variables = jax.jit(lambda k: self.model.init(k, x0, disc_in, method=AdaptationModel.init_all))(
            jax.random.key(cfg.seed))
        variables = jax.tree.map(np.asarray, dict(variables))
        variables.setdefault("batch_stats", {})
        if cfg.model.init:
            variables = _load_backbone(cfg, variables)
        params = variables["params"]
        self.lr = make_schedule(cfg)
        if self.structure == "mcd":
            self.phases = mcd_phases(cfg.loss, a.mcd_generator_steps)
            self.txs = [make_optimizer(_only(cfg, ph.trainable), params) for ph in self.phases]
            self.tx = None
            opt_state = tuple(tx.init(params) for tx in self.txs)
        else:
            self.tx = make_optimizer(cfg, params)
            opt_state = self.tx.init(params)
        state = TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], opt_state,
                           jax.random.key_data(jax.random.key(cfg.seed + 1)), None)
        self.state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    # -- forward -----------------------------------------------------------------------------
    def model_input(self, images):
        from jtl.train.tasks import normalize_on_device  # noqa: PLC0415

        return normalize_on_device(images, self.normalization)

    def apply_head(self, params, name, x):
        return self.model.apply({"params": params}, name, x, method=AdaptationModel.apply_head)

    def forward(self, variables, batch, train: bool, rng=None):
        if "image_t" not in batch:  # evaluation on one domain
            logits, feats = self.model.apply(variables, self.model_input(batch["image"]), train=False,
                                             return_features=True)
            return {"logits": logits, "features": feats}, variables["batch_stats"]
        xs, xt = self.model_input(batch["image_s"]), self.model_input(batch["image_t"])
        if not self.uses_target:
            xt = xt[:0]
        parts = [xs, xt]
        if self.strong:
            parts.append(strong_augment(xt, jax.random.fold_in(rng, 1)))
        x = jnp.concatenate(parts)
        if train:
            (logits, feats), upd = self.model.apply(variables, x, train=True, return_features=True,
                                                    mutable=["batch_stats"])
            stats = upd["batch_stats"]
        else:
            logits, feats = self.model.apply(variables, x, train=False, return_features=True)
            stats = variables["batch_stats"]
        ns, nt = xs.shape[0], xt.shape[0]
        f = feats["pooled"]
        out = {"logits": logits[:ns], "logits_t": logits[ns:ns + nt], "f_s": f[:ns], "f_t": f[ns:ns + nt],
               "features": {"pooled": f[:ns]}}
        if self.strong:
            out["logits_t_strong"] = logits[ns + nt:]
        if "head2" in self.model.heads:
            l2 = self.apply_head(variables["params"], "head2", f[: ns + nt])
            out["logits2"], out["logits2_t"] = l2[:ns], l2[ns:]
        return out, stats

    @staticmethod
    def prepare(batch: dict) -> dict:
        return {"image_s": batch["source"]["image"], "label": batch["source"]["label"],
                "image_t": batch["target"]["image"]}

    # -- steps -------------------------------------------------------------------------------
    def make_step(self, loss_fn, cfg):
        """The step structure: ``single``, or MCD's three phases, each with its own optimizer."""
        from jtl.train.steps import make_loss_fn, make_train_step  # noqa: PLC0415

        if self.structure == "single":
            return make_train_step(loss_fn, make_optimizer(cfg, self.state.params))
        txs = [make_optimizer(_only(cfg, ph.trainable), self.state.params) for ph in self.phases]
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


def heads_of(names: Sequence[str]) -> tuple[str, ...]:
    """The extra heads the loss pieces ``names`` need: ``disc``, ``adv`` (MDD), ``head2`` (MCD)."""
    discs = [n for n in names if n in DISC_PIECES]
    if len(discs) > 1:
        raise ConfigError(f"loss pieces {discs} would share one discriminator; use one of them per run")
    return tuple(h for h, need in (("disc", bool(discs)), ("adv", "mdd" in names), ("head2", "mcd" in names)) if need)


def _only(cfg, trainable: str):
    """A copy of ``cfg`` whose optimizer freezes every parameter outside ``trainable``."""
    c = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)  # no deep copy: values may be tracers
    c.freeze = tuple(c.freeze) + (rf"^(?!{trainable[1:] if trainable.startswith('^') else trainable})",) \
        if trainable != r"." else tuple(c.freeze)
    return c


def _load_backbone(cfg, variables):
    """Pretrained weights: a registry name, port dir or .pth (backbone only), a fine-tuning
    run's workdir (backbone only) or an adaptation run's workdir (all but the extra heads)."""
    from jtl.train.tasks import pretrained_variables  # noqa: PLC0415
    from jtl.weights import merge_pretrained  # noqa: PLC0415

    with phase(f"loading model.init {cfg.model.init}"):
        pre = pretrained_variables(cfg)
    if "backbone" in pre["params"]:
        # Another adaptation run (the source warm-up): keep its backbone, bottleneck and
        # classifier; the method's extra heads start fresh, and so do a bottleneck and
        # classifier of another width (the bottleneck ablation starts from one warm-up).
        merged, report = merge_pretrained(variables, pre,
                                          reinit=r"^(params|batch_stats)/(disc|adv|head2|bottleneck|head)/")
        say(f"model.init {cfg.model.init}: {report.summary()}")
        return merged
    pretrained = {"params": {"backbone": pre["params"]}, "batch_stats": {"backbone": pre["batch_stats"]}}
    merged, report = merge_pretrained(variables, pretrained,
                                      reinit=r"^(params|batch_stats)/(?!backbone/)|^(params|batch_stats)/backbone/fc/")
    say(f"model.init {cfg.model.init}: {report.summary()}")
    return merged


def build(cfg, mesh):
    return AdaptationTask(cfg, mesh)
