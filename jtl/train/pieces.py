"""Loss pieces: named, weighted terms that share one forward pass.

A run's loss is ``sum_i weight_i * piece_i(ctx, **options_i)`` with the pieces
named in ``config.loss`` and their options in ``config.loss_options.<name>``.
A piece is a small function of the step's :class:`Context`; register new ones
with :func:`register`, and they are usable from any config::

    @register("my_loss")
    def my_loss(ctx, *, scale=1.0):
        return scale * jnp.mean(ctx.out["features"]["pooled"] ** 2)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jtl.errors import ConfigError
from jtl.losses import regularizers
from jtl.models.layers import per_member_op
from jtl.optim import nonzero


@dataclasses.dataclass
class Context:
    """What a piece may read: ``params`` being trained, ``anchor`` (starting variables),
    the ``batch``, the forward ``out`` ({"logits", "features", ...}), ``teacher``
    (the starting model's outputs on the batch, computed only if a piece needs them),
    training ``progress`` in [0, 1], a fresh ``rng`` key, the ``head`` regex and
    ``apply_head(name, x)``, which applies one of the model's extra heads (a domain
    discriminator, ...) with the parameters being trained. A piece returns a scalar, or
    ``(scalar, {name: scalar})`` to log extra metrics."""

    params: Any
    anchor: Any
    batch: dict
    out: dict
    teacher: dict | None
    progress: jax.Array
    rng: jax.Array
    head: str = r"^(?!backbone/)"
    apply_head: Callable[[str, jax.Array], jax.Array] | None = None  # (head name, inputs) -> outputs
    bank: dict | None = None  # the run's memory banks (pieces that declare them), {name: (N, ...) array}

    def set_rows(self, name: str, rows: jax.Array) -> jax.Array:
        """Write ``rows`` (detached) into bank ``name`` at the batch's sample ids ``batch["index"]``;
        returns the bank array, which the step keeps in the train state."""
        old = self.bank[name]
        self.bank[name] = old.at[self.batch["index"]].set(jax.lax.stop_gradient(rows).astype(old.dtype))
        return self.bank[name]


@dataclasses.dataclass(frozen=True)
class Head:
    """An extra head a piece applies through ``ctx.apply_head(name, x)``: ``hidden`` layers of
    width ``adapt.disc_hidden`` (ReLU) then ``outputs`` units (``"classes"``: one per class);
    ``hidden=0`` is one linear layer. ``input_dim(options, feature_dim, num_classes)`` gives its
    input width (default: the feature width). Heads live in the train state as ``params/<name>``."""

    hidden: int
    outputs: int | str
    input_dim: Callable[[dict, int, int], int] | None = None

    def width(self, options: dict, feature_dim: int, num_classes: int) -> int:
        return self.input_dim(options, feature_dim, num_classes) if self.input_dim else feature_dim


@dataclasses.dataclass(frozen=True)
class Bank:
    """A per-sample memory over the run's unlabelled training set, kept in the train state
    (``state.bank[name]``: checkpointed, resumed, stacked in vectorized sweeps) and read by
    pieces as ``ctx.bank[name]`` (rows: ``batch["index"]``; :meth:`Context.set_rows` writes them).

    ``row(feature_dim, num_classes)`` is a row's shape. Before the first step, and then every
    ``every`` steps (``every`` names the piece option holding the count; 0 there: once per pass
    over the set; None: only before the first step), the trainer runs the current model in eval
    mode over the whole set in sample order and sets the bank to ``fill(logits, features, options)``
    (``(N, C)``, ``(N, d)`` and the piece's options) (:mod:`jtl.train.bank`)."""

    row: Callable[[int, int], tuple[int, ...]]
    dtype: Any
    fill: Callable[[jax.Array, jax.Array, dict], jax.Array]
    every: str | None = None


@dataclasses.dataclass(frozen=True)
class Piece:
    """A loss piece and what it needs from the task, declared when it is registered:

    - ``needs_anchor`` / ``needs_teacher``: the starting variables / their outputs on the batch;
    - ``heads``: ``{name: Head}`` extra heads it applies (a domain discriminator, ...);
    - ``views``: extra views of the target batch it reads (``"strong"``: ``out["logits_t_strong"]``);
    - ``needs_target`` (default True): it reads the unlabelled target batch of an adaptation run;
      when no piece of a run does, the target never enters the forward pass, not even its
      BatchNorm statistics (source-only training);
    - ``phases``: ``phases(loss, cfg) -> [Phase]``, a step made of several updates (MCD);
    - ``needs_source`` (default True): it reads labelled source data; a source-free run
      (``adapt.source_free``) accepts only pieces that declare False;
    - ``banks``: ``{name: Bank}`` per-sample memories it keeps over the training set (their pieces
      read ``batch["index"]``, each sample's id).
    """

    fn: Callable[..., jax.Array]
    needs_anchor: bool = False
    needs_teacher: bool = False
    heads: tuple[tuple[str, Head], ...] = ()
    views: tuple[str, ...] = ()
    phases: Callable | None = None
    needs_target: bool = True
    needs_source: bool = True
    banks: tuple[tuple[str, Bank], ...] = ()


@dataclasses.dataclass(frozen=True)
class Phase:
    """One update inside a step: its loss pieces and the parameters it trains (regex)."""

    name: str
    loss: tuple[tuple[str, float], ...]
    trainable: str = r"."
    repeats: int = 1


PIECES: dict[str, Piece] = {}


def register(name: str, *, needs_anchor: bool = False, needs_teacher: bool = False, heads: dict | None = None,
             views: tuple[str, ...] = (), needs_target: bool = True, phases: Callable | None = None,
             needs_source: bool = True, banks: dict | None = None):
    """Decorator: make ``fn(ctx, **options) -> scalar`` available as loss piece ``name``,
    with the needs it declares (see :class:`Piece`)."""

    def wrap(fn):
        PIECES[name] = Piece(fn, needs_anchor or needs_teacher, needs_teacher, tuple(sorted((heads or {}).items())),
                             tuple(views), phases, needs_target, needs_source, tuple(sorted((banks or {}).items())))
        return fn

    return wrap


def declared_heads(names) -> dict[str, Head]:
    """The extra heads the pieces ``names`` need, by name; two different heads of one name are an error."""
    out: dict[str, Head] = {}
    for n in names:
        for head_name, head in get_piece(n).heads:
            if out.get(head_name, head) != head:
                users = [m for m in names if head_name in dict(get_piece(m).heads)]
                raise ConfigError(f"loss pieces {users} need different heads named {head_name!r}; "
                                  "use one of them per run")
            out[head_name] = head
    return out


def declared_banks(names) -> dict[str, tuple[str, Bank]]:
    """The memory banks the pieces ``names`` keep: ``{bank name: (piece, Bank)}``; two different
    banks of one name are an error (one bank shared by several pieces is fine)."""
    out: dict[str, tuple[str, Bank]] = {}
    for n in names:
        for bank_name, bank in get_piece(n).banks:
            if bank_name in out and out[bank_name][1] != bank:
                raise ConfigError(f"loss pieces {out[bank_name][0]!r} and {n!r} keep different memory banks named "
                                  f"{bank_name!r}; use one of them per run")
            out.setdefault(bank_name, (n, bank))
    return out


def declared_views(names) -> tuple[str, ...]:
    return tuple(sorted({v for n in names for v in get_piece(n).views}))


def declared_phases(loss, cfg) -> list[Phase] | None:
    """The phases of a multi-update step, if one piece of ``loss`` declares them (else None: one update)."""
    builders = [n for n, _ in loss if get_piece(n).phases is not None]
    if len(builders) > 1:
        raise ConfigError(f"loss pieces {builders} each declare their own step phases; use one of them per run")
    return get_piece(builders[0]).phases(loss, cfg) if builders else None


def get_piece(name: str) -> Piece:
    if name not in PIECES:
        raise ConfigError(f"unknown loss piece {name!r}; known: {', '.join(sorted(PIECES))}")
    return PIECES[name]


def split_head(params, head: str):
    """``(shared, new)``: parameters outside and inside the head (paths matching ``head``)."""
    flat = traverse_util.flatten_dict(params)
    rx = re.compile(head)
    shared = {k: v for k, v in flat.items() if not rx.search("/".join(k))}
    new = {k: v for k, v in flat.items() if rx.search("/".join(k))}
    return shared, new


@register("ce", needs_target=False)
def ce(ctx: Context, *, label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy on the labelled batch (``out["logits"]``, ``batch["label"]``)."""
    logits = ctx.out["logits"].astype(jnp.float32)
    labels = jax.nn.one_hot(ctx.batch["label"], logits.shape[-1])
    if nonzero(label_smoothing):
        labels = optax.smooth_labels(labels, label_smoothing)
    # Per member in a vectorized sweep: the softmax's reductions then round as in a run alone.
    return per_member_op(lambda z, y: jnp.mean(optax.softmax_cross_entropy(z, y)))(logits, labels)


@register("l2sp", needs_anchor=True, needs_target=False)
def l2sp_piece(ctx: Context, *, alpha: float = 1.0, beta: float = 0.0) -> jax.Array:
    """L2-SP towards the starting parameters (see :func:`jtl.losses.regularizers.l2sp`)."""
    shared, new = split_head(ctx.params, ctx.head)
    shared0, _ = split_head(ctx.anchor["params"], ctx.head)
    return regularizers.l2sp(shared, shared0, new, alpha=alpha, beta=beta)


@register("delta", needs_teacher=True, needs_target=False)
def delta_piece(ctx: Context, *, layers=None) -> jax.Array:
    """DELTA feature-map distance to the starting model on the same batch (default: the backbone
    family's taps, :mod:`jtl.models.backbones`)."""
    feats, feats0 = ctx.out["features"], ctx.teacher["features"]
    layers = layers or sorted(k for k in feats if k not in ("pooled", "backbone_pooled"))
    return regularizers.delta([feats[k] for k in layers], [feats0[k] for k in layers])


@register("bss", needs_target=False)
def bss_piece(ctx: Context, *, k: int = 1) -> jax.Array:
    """Batch spectral shrinkage of the pooled features."""
    return regularizers.bss(ctx.out["features"]["pooled"], k)


@register("lwf", needs_teacher=True, needs_target=False)
def lwf_piece(ctx: Context, *, temperature: float = 2.0) -> jax.Array:
    """LwF distillation through the starting model's head (``anchor["old_head"]``)."""
    head = ctx.anchor.get("old_head") if isinstance(ctx.anchor, dict) else None
    if head is None:
        raise ConfigError("loss piece 'lwf' needs a starting model with a classifier head (model.init)")
    old = lambda f: f.astype(jnp.float32) @ head["kernel"] + head["bias"]
    return regularizers.lwf(old(ctx.out["features"]["pooled"]), old(ctx.teacher["features"]["pooled"]),
                            temperature=temperature)
