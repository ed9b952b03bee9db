"""Memory banks: per-sample memories that loss pieces keep over the run's unlabelled training set.

A piece declares its banks (:class:`jtl.train.pieces.Bank`); a task whose pieces do gives its
train state ``bank = {name: (N, ...) array}`` (:func:`initial_banks`), its batches the sample
ids ``batch["index"]``, and itself ``bank_size`` (N) and ``bank_pass`` (``() ->`` one ordered
pass over the set, normalised as in training). The trainer then calls :func:`refresh` before
every step: when a bank's pass is due (before the first step; then every ``every`` steps), the
current model runs in eval mode over the whole set and the bank becomes ``fill(logits,
features, options)``. Between passes, pieces update rows in the step (``Context.set_rows``).
The banks are train state: checkpointed with it, resumed bit for bit, stacked per member in
a vectorized sweep. This module names no piece.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jtl.errors import ConfigError
from jtl.train.pieces import Bank, declared_banks, get_piece


def piece_options(cfg, piece: str) -> dict:
    """The options piece ``piece`` runs with: its keyword defaults, then ``loss_options.<piece>``."""
    defaults = {p.name: p.default for p in inspect.signature(get_piece(piece).fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}
    given = cfg.loss_options.to_dict().get(piece, {}) if "loss_options" in cfg else {}
    return {**defaults, **given}


def initial_banks(cfg, size: int, feature_dim: int, num_classes: int) -> dict | None:
    """Zeroed banks of the run's pieces, ``{name: (size, *row)}`` (None when no piece keeps one);
    the first pass fills them before step 1."""
    banks = declared_banks(list(cfg.loss))
    if not banks:
        return None
    return {name: jnp.zeros((size, *bank.row(feature_dim, num_classes)), bank.dtype)
            for name, (_, bank) in sorted(banks.items())}


def period(cfg, piece: str, bank: Bank, size: int) -> int | None:
    """Steps between passes of ``bank`` (None: only before the first step)."""
    if bank.every is None:
        return None
    every = piece_options(cfg, piece)[bank.every]
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"loss_options.{piece}.{bank.every} must be a whole number of steps >= 0 "
                          f"(0: once per pass over the {size} samples), got {every!r}")
    return every or max(1, size // cfg.batch_size)


def due(cfg, size: int, step: int) -> dict[str, tuple[str, Bank]]:
    """The banks whose pass comes before ``step`` (1-based): all of them before step 1, then
    each every ``period`` steps."""
    out = {}
    for name, (piece, bank) in declared_banks(list(cfg.loss)).items():
        every = period(cfg, piece, bank, size)
        if step == 1 or (every is not None and (step - 1) % every == 0):
            out[name] = (piece, bank)
    return out


def refresh(trainer, state, step: int):
    """``state`` with the banks due before ``step`` refilled from a pass of each member's model
    over its training set (:class:`jtl.train.loop.Trainer`; a vectorized sweep's members each
    their own); unchanged when none is due or the run keeps no banks."""
    if state.bank is None:
        return state
    task = trainer.task
    todo = due(trainer.cfg, task.bank_size, step)
    if not todo:
        return state
    passes = trainer._member_passes(state, lambda t: t.bank_pass, "the memory-bank pass")
    new = []
    for i, (logits, pooled, _) in enumerate(passes):
        logits, pooled = np.concatenate(logits), np.concatenate(pooled)
        member = jax.tree.map(lambda x, i=i: np.asarray(x[i]), state.bank) if trainer.stacked else \
            jax.tree.map(np.asarray, state.bank)
        for name, (piece, bank) in todo.items():
            value = np.asarray(bank.fill(jnp.asarray(logits), jnp.asarray(pooled),
                                         piece_options(trainer.members[i].cfg, piece)))
            if value.shape != member[name].shape:
                raise ConfigError(f"memory bank {name!r} of loss piece {piece!r}: its pass gave {value.shape}, "
                                  f"the bank holds {member[name].shape}")
            member[name] = value.astype(member[name].dtype)
        new.append(member)
    banks = jax.tree.map(lambda *xs: np.stack(xs), *new) if trainer.stacked else new[0]
    return state.replace(bank=jax.tree.map(lambda v, old: jax.device_put(v, old.sharding), banks, state.bank))
