"""The domain-adaptation loss pieces and what each declares it needs.

Pieces see ``f_s, f_t`` (bottleneck features), ``logits`` (source) and ``logits_t``
(target), and apply the extra heads they declare through ``ctx.apply_head``: a domain
discriminator ``disc`` (``dann``, ``cdan``, ``wdgrl``), MDD's adversarial classifier
``adv``, MCD's second classifier ``head2``. Adversarial pieces put :func:`jtl.losses.grl`
between features and head, with the warm-up ``lambda_p = 2 / (1 + exp(-alpha p)) - 1``
(``p`` = training progress). ``fixmatch`` declares the ``strong`` view of the target batch;
``mcd`` declares its three-update step (:func:`mcd_phases`); ``shot`` and ``nrc`` the memory
banks they keep over the target set (:class:`jtl.train.pieces.Bank`), and the target-only
pieces ``needs_source=False`` (source-free runs, :mod:`jtl.train.source_free`). The task
reads these declarations (:mod:`jtl.train.pieces`) and names no piece.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from jtl import losses as L
from jtl.errors import ConfigError
from jtl.losses.mcd import class_balance
from jtl.optim import nonzero
from jtl.train.pieces import Bank, Context, Head, Phase, register

# The heads pieces declare (widths: adapt.disc_hidden; "classes": one output per class).
DISC = Head(hidden=2, outputs=1)
ADV = Head(hidden=1, outputs="classes")  # MDD's adversary must be as strong as an MLP (Zhang et al. 2019)
SECOND_CLASSIFIER = Head(hidden=0, outputs="classes")


def _cdan_width(options: dict, feature_dim: int, num_classes: int) -> int:
    """CDAN's discriminator input: ``f (x) softmax(g)`` (d * K), or its randomized map's ``dim``."""
    opts = options.get("cdan", {})
    return opts.get("dim", 1024) if opts.get("randomized", False) else feature_dim * num_classes


CDAN_DISC = Head(hidden=2, outputs=1, input_dim=_cdan_width)


# ---------------------------------------------------------------------------------- step structures
def mcd_phases(loss: Sequence[tuple[str, float]], cfg) -> list[Phase]:
    """Saito et al. (2018): A) all on source CE of both classifiers (plus any other pieces);
    B) classifiers on CE - w*discrepancy; C) features on w*discrepancy, n times.

    With ``loss_options.mcd.balance_weight = b`` (TLlib's ``--trade-off-entropy``, 0.01 there;
    default 0: off), A and B also minimise ``b * mcd_balance`` (:func:`jtl.losses.mcd.class_balance`
    of both classifiers' target predictions), as TLlib's MCD example does."""
    if "mcd_balance" in dict(loss):
        raise ConfigError("loss piece 'mcd_balance' is set by loss_options.mcd.balance_weight, not in loss")
    w = dict(loss)["mcd"]
    b = cfg.loss_options.to_dict().get("mcd", {}).get("balance_weight", 0.0) if "loss_options" in cfg else 0.0
    balance = (("mcd_balance", b),) if nonzero(b) else ()
    others = tuple((n, v) for n, v in loss if n not in ("mcd", "ce", "ce2"))
    ce = (("ce", 1.0), ("ce2", 1.0))
    return [
        Phase("A", ce + balance + others),
        Phase("B", ce + balance + (("mcd", -w),), r"^(head|head2)/"),
        Phase("C", (("mcd", w),), r"^(backbone|bottleneck)/", cfg.adapt.mcd_generator_steps),
    ]


def _coeff(ctx: Context, alpha: float, high: float = 1.0):
    return L.grl_coeff(ctx.progress, alpha=alpha, high=high)


def _both(ctx):
    return jnp.concatenate([ctx.out["f_s"], ctx.out["f_t"]]), ctx.out["f_s"].shape[0]


@register("dann", heads={"disc": DISC})
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


@register("cdan", heads={"disc": CDAN_DISC})
def cdan_piece(ctx: Context, *, alpha: float = 10.0, entropy: bool = True, randomized: bool = False,
               dim: int = 1024, normalize: str = "domain"):
    """CDAN(+E): discriminator on ``grl(f (x) softmax(g))``; ``entropy`` weights by 1 + exp(-H),
    normalised per domain (``normalize="domain"``) or over the joint batch as TLlib does
    (``"joint"``; see :func:`jtl.losses.cdan`). TLlib's example: ``entropy=False`` unless ``--entropy``."""
    f, n = _both(ctx)
    g = jnp.concatenate([ctx.out["logits"], ctx.out["logits_t"]])
    h = cdan_input(f, g, randomized=randomized, dim=dim)
    d = ctx.apply_head("disc", L.grl(h, _coeff(ctx, alpha)))[:, 0]
    ws = wt = None
    if entropy:
        p = jax.nn.softmax(g)
        if normalize == "joint":
            w = L.entropy_weights(p)
            ws, wt = w[:n], w[n:]
        else:
            ws, wt = L.entropy_weights(p[:n]), L.entropy_weights(p[n:])
    acc = 0.5 * (jnp.mean(d[:n] > 0) + jnp.mean(d[n:] < 0))
    return L.cdan(d[:n], d[n:], ws, wt, normalize=normalize), {"disc_accuracy": acc}


@register("mmd")
def mmd_piece(ctx: Context, *, alphas=(0.5, 1.0, 2.0), linear: bool = False, pairs: str = "disjoint",
              bandwidth: str = "offdiag"):
    """DAN: multi-kernel MMD between source and target bottleneck features (options: :func:`jtl.losses.mk_mmd`;
    TLlib's DAN: ``alphas=(0.125, 0.25, 0.5, 1, 2), linear=True, pairs="circular", bandwidth="tllib"``)."""
    return L.mk_mmd(ctx.out["f_s"], ctx.out["f_t"], alphas=tuple(alphas), linear=linear, pairs=pairs,
                    bandwidth=bandwidth)


@register("jmmd")
def jmmd_piece(ctx: Context, *, linear: bool = False, alphas_per_layer=None, pairs: str = "disjoint",
               bandwidth: str = "offdiag"):
    """JAN: joint MMD over (features, softmax outputs) (options: :func:`jtl.losses.jmmd`)."""
    ps, pt = jax.nn.softmax(ctx.out["logits"]), jax.nn.softmax(ctx.out["logits_t"])
    return L.jmmd([ctx.out["f_s"], ps], [ctx.out["f_t"], pt], linear=linear, alphas_per_layer=alphas_per_layer,
                  pairs=pairs, bandwidth=bandwidth)


@register("coral")
def coral_piece(ctx: Context, *, convention: str = "paper"):
    """Deep CORAL on the bottleneck features (``convention="tllib"``: TLlib's mean + covariance form)."""
    return L.coral(ctx.out["f_s"], ctx.out["f_t"], convention=convention)


@register("mdd", heads={"adv": ADV})
def mdd_piece(ctx: Context, *, margin: float = 4.0, alpha: float = 10.0, high: float = 0.1,
              convention: str = "paper"):
    """MDD: the adversarial classifier on ``grl(f)`` against the main classifier's predictions.

    The reversal coefficient ramps to ``high`` = 0.1: with the margin's weight gamma on the
    source term, a full-strength reversal lets the features destroy source accuracy
    (measured: digits -> digits:mnistm fell below source-only at 1.0). TLlib's ramp too
    (``tllib/alignment/mdd.py``: hi 0.1 over ``i / 1000`` iterations: ``alpha = total_steps / 1000``).
    ``convention="tllib"``: TLlib's ``shift_log`` on the target term (:func:`jtl.losses.mdd`)."""
    f, n = _both(ctx)
    adv = ctx.apply_head("adv", L.grl(f, _coeff(ctx, alpha, high)))
    return L.mdd((ctx.out["logits"], ctx.out["logits_t"]), adv[:n], adv[n:], margin=margin, convention=convention)


@register("wdgrl", heads={"disc": DISC})
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
    """SAFN on each domain, summed: ``afn(f_s) + afn(f_t)`` (Xu et al. 2019; TLlib's
    ``examples/domain_adaptation/image_classification/afn.py``). Value ``2 delta^2``; each sample's
    gradient is ``-2 delta f_i / (B ||f_i||)``, twice that of one ``afn`` over the joint batch."""
    return L.afn(ctx.out["f_s"], delta=delta) + L.afn(ctx.out["f_t"], delta=delta)


@register("mcc", needs_source=False)  # target-only: usable without source data (adapt.source_free)
def mcc_piece(ctx: Context, *, temperature: float = 2.5):
    """MCC on the target predictions."""
    return L.mcc(ctx.out["logits_t"], temperature=temperature)


@register("bnm", needs_source=False)
def bnm_piece(ctx: Context):
    """BNM on the target predictions."""
    return L.bnm(ctx.out["logits_t"])


@register("entropy", needs_source=False)
def entropy_piece(ctx: Context):
    """Entropy minimisation on the target predictions."""
    return L.entropy(ctx.out["logits_t"])


@register("im", needs_source=False)
def im_piece(ctx: Context):
    """Information maximisation on the target predictions (entropy minus diversity)."""
    return L.information_maximization(ctx.out["logits_t"])


@register("fixmatch", views=("strong",), needs_source=False)
def fixmatch_piece(ctx: Context, *, threshold: float = 0.95):
    """Self-training: pseudo-labels of the weak target view supervise the strong view."""
    loss, aux = L.pseudo_label_loss_with_aux(ctx.out["logits_t"], ctx.out["logits_t_strong"], threshold=threshold)
    return loss, aux


def second_classifier(ctx: Context):
    """MCD's second classifier F2 on ``f_s`` and ``f_t``: one application to the batch the main
    classifier sees (``[f_s; f_t]``, or ``f_s`` alone in a source-only step), made once per update and
    shared by the pieces, as TLlib's ``y_2 = F2(g)`` (which matters once F2 has BatchNorm or dropout)."""
    if "head2_t" not in ctx.out:
        fs, ft = ctx.out.get("f_s", ctx.out["f_t"][:0]), ctx.out["f_t"]
        y = ctx.apply_head("head2", jnp.concatenate([fs, ft]))
        ctx.out["head2_s"], ctx.out["head2_t"] = y[:fs.shape[0]], y[fs.shape[0]:]
    return ctx.out["head2_s"], ctx.out["head2_t"]


@register("ce2", heads={"head2": SECOND_CLASSIFIER}, needs_target=False)
def ce2_piece(ctx: Context):
    """Source cross-entropy of MCD's second classifier."""
    logits, _ = second_classifier(ctx)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ctx.batch["label"]))


@register("mcd", heads={"head2": SECOND_CLASSIFIER}, phases=mcd_phases)
def mcd_piece(ctx: Context, *, balance_weight: float = 0.0):
    """MCD's classifier discrepancy on the target batch. ``balance_weight`` is read by
    :func:`mcd_phases` (it adds ``mcd_balance`` to steps A and B), not here."""
    del balance_weight
    return L.mcd_discrepancy(ctx.out["logits_t"], second_classifier(ctx)[1])


@register("mcd_balance", heads={"head2": SECOND_CLASSIFIER})
def mcd_balance_piece(ctx: Context):
    """TLlib's MCD class-balance term on both classifiers' target predictions,
    ``class_balance(F1(f_t)) + class_balance(F2(f_t))``; see :func:`mcd_phases`."""
    return class_balance(ctx.out["logits_t"]) + class_balance(second_classifier(ctx)[1])




# ---------------------------------------------------------------------------------- source-free
def _features_row(feature_dim: int, num_classes: int) -> tuple[int, ...]:
    return (feature_dim,)


def _classes_row(feature_dim: int, num_classes: int) -> tuple[int, ...]:
    return (num_classes,)


def _scalar_row(feature_dim: int, num_classes: int) -> tuple[int, ...]:
    return ()


# Memory banks over the target set (jtl.train.bank): filled by a pass of the model over it.
SHOT_LABELS = Bank(_scalar_row, jnp.int32, lambda z, f, o: L.shot_pseudo_labels(z, f, rounds=o["rounds"]), "interval")
NRC_FEATURES = Bank(_features_row, jnp.float32, lambda z, f, o: L.unit_rows(f))
NRC_SCORES = Bank(_classes_row, jnp.float32, lambda z, f, o: jax.nn.softmax(z.astype(jnp.float32), axis=-1))


@register("shot", needs_source=False, banks={"shot_labels": SHOT_LABELS})
def shot_piece(ctx: Context, *, interval: int = 0, rounds: int = 1):
    """SHOT's self-supervised pseudo-label loss (Liang et al. 2020): cross-entropy of the target
    predictions with each sample's label from the last clustering pass over the target set
    (:func:`jtl.losses.shot_pseudo_labels`, ``rounds`` refinements), redone every ``interval``
    steps (0: once per pass over the target set, SHOT's epochs). Reports ``agreement``: the
    share of the batch whose prediction is its pseudo-label."""
    del interval, rounds  # read by the bank's pass (jtl.train.bank)
    labels = ctx.bank["shot_labels"][ctx.batch["index"]]
    logits = ctx.out["logits_t"]
    return L.cross_entropy(logits, labels), {"agreement": jnp.mean(jnp.argmax(logits, -1) == labels)}


@register("nrc", needs_source=False, banks={"nrc_features": NRC_FEATURES, "nrc_scores": NRC_SCORES})
def nrc_piece(ctx: Context, *, k: int = 5, kk: int = 5, r: float = 0.1):
    """NRC (Yang et al. 2021): the batch's unit features and softmax scores go into the banks,
    then :func:`jtl.losses.nrc` pulls each prediction towards its ``k`` neighbours' stored
    scores (reciprocal ones weighted 1, others ``r``) and their ``kk`` neighbours' (``r``)."""
    logits = ctx.out["logits_t"]
    feats = ctx.set_rows("nrc_features", L.unit_rows(ctx.out["f_t"]))
    scores = ctx.set_rows("nrc_scores", jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
    return L.nrc(logits, ctx.batch["index"], feats, scores, k=k, kk=kk, r=r)


@register("diversity", needs_source=False)
def diversity_piece(ctx: Context):
    """Diversity of the batch's target predictions, ``sum_c pbar_c log pbar_c`` (NRC's L_div)."""
    return L.diversity(ctx.out["logits_t"])


# ---------------------------------------------------------------------------------- views
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




VIEWS = {"strong": strong_augment}  # view name -> (target images, key) -> images
