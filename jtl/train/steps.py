"""Compiled train and eval steps, data-parallel over a device mesh.

The batch is sharded along the mesh's ``data`` axis, the state is replicated;
under ``jax.jit`` the gradient mean and the BatchNorm statistics are therefore
over the global batch, and XLA inserts the all-reduces. The state argument is
donated. Gradient accumulation splits the batch into ``accum`` micro-batches
scanned in order (BatchNorm statistics update after each, as separate steps
would); the update uses the mean gradient.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jtl.errors import ConfigError
from jtl.train.pieces import Context, get_piece
from jtl.train.state import TrainState

Forward = Callable[..., tuple[dict, Any]]  # (variables, batch, train) -> (out, new_batch_stats)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.array(devices), ("data",))


def shard_batch(mesh: Mesh, batch: dict) -> dict:
    """Host batch (this process's rows) -> global arrays sharded along ``data``."""
    sharding = NamedSharding(mesh, P("data"))
    n = mesh.devices.size
    rows = len(next(iter(batch.values())))
    if (rows * jax.process_count()) % n:
        raise ConfigError(f"batch of {rows * jax.process_count()} rows is not divisible by the {n} devices")
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def make_loss_fn(forward: Forward, loss: Sequence[tuple[str, float]], options: dict, total_steps: int,
                 head: str = r"^(?!backbone/)", apply_head=None):
    """``loss_fn(params, state, batch, rng) -> (total, (new_batch_stats, metrics))``, with the new
    memory banks as a third element when the state keeps banks (:class:`jtl.train.pieces.Bank`).

    ``apply_head(params, name, x, rng)``, when the model has extra heads, lets pieces apply them
    (``rng``: a fresh dropout key per application).
    """
    pieces = [(name, w if isinstance(w, jax.Array) else float(w), get_piece(name), dict(options.get(name, {})))
              for name, w in loss]
    needs_teacher = any(p.needs_teacher for _, _, p, _ in pieces)

    def loss_fn(params, state: TrainState, batch, rng):
        fwd_key, piece_key = jax.random.split(rng)
        out, new_stats = forward({"params": params, "batch_stats": state.batch_stats}, batch, True, fwd_key)
        teacher = None
        if needs_teacher:
            anchor = state.anchor
            teacher, _ = forward({"params": anchor["params"], "batch_stats": anchor["batch_stats"]}, batch, False)
            teacher = jax.lax.stop_gradient(teacher)
        heads = None
        if apply_head is not None:  # each application draws its own dropout key (heads with dropout)
            head_key, calls = jax.random.fold_in(piece_key, 1 << 20), itertools.count()
            heads = lambda name, x: apply_head(params, name, x, jax.random.fold_in(head_key, next(calls)))  # noqa: E731
        ctx = Context(params, state.anchor, batch, out, teacher, state.step / total_steps, piece_key, head, heads,
                      None if state.bank is None else dict(state.bank))
        metrics, total = {}, 0.0
        for name, w, piece, opts in pieces:
            value = piece.fn(ctx, **opts)
            if isinstance(value, tuple):
                value, aux = value
                metrics.update({f"{name}/{k}": v for k, v in aux.items()})
            metrics[f"loss/{name}"] = value
            total = total + w * value
        if "label" in batch:
            metrics["accuracy"] = jnp.mean(jnp.argmax(out["logits"], -1) == batch["label"])
        if state.bank is not None:  # the memory banks as the pieces left them (Context.set_rows)
            return total, (new_stats, metrics, ctx.bank)
        return total, (new_stats, metrics)

    return loss_fn


def build_step(task, cfg):
    """The task's train step for ``cfg`` (not yet jitted).

    Every number of ``cfg`` is read here, at trace time, so a vectorized sweep can
    pass a config whose swept values are tracers (:mod:`jtl.train.vector`).
    """
    loss_fn = make_loss_fn(task.forward, tuple(cfg.loss.items()), cfg.loss_options.to_dict(), cfg.total_steps,
                           task.head_regex,
                           apply_head=getattr(task, "apply_head", None))
    return task.make_step(loss_fn, cfg)


def make_train_step(loss_fn, tx: optax.GradientTransformation, *, accum: int = 1):
    """``step(state, batch) -> (state, metrics)`` (not yet jitted)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch):
        key = jax.random.wrap_key_data(state.rng)
        key, sub = jax.random.split(key)
        bank = ()  # the new memory banks, when the state keeps them (accum == 1 only)
        if accum == 1:
            (loss, (stats, metrics, *bank)), grads = grad_fn(state.params, state, batch, sub)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, xs):
                stats, grads_sum = carry
                mb, k = xs
                (l, (stats, m)), g = grad_fn(state.params, state.replace(batch_stats=stats), mb, k)
                return (stats, jax.tree.map(jnp.add, grads_sum, g)), (l, m)

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (stats, grads), (losses, ms) = jax.lax.scan(
                body, (state.batch_stats, zeros), (micro, jax.random.split(sub, accum))
            )
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss, metrics = jnp.mean(losses), jax.tree.map(jnp.mean, ms)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state,
                            rng=jax.random.key_data(key), **({"bank": bank[0]} if bank else {}))
        return new, metrics

    return step


def jit_train_step(step, mesh: Mesh):
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step, in_shardings=(replicated, data), out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(forward: Forward, mesh: Mesh):
    """``eval_step(state, batch) -> {"logits", "pooled"}`` in eval mode, jitted."""

    def step(state: TrainState, batch):
        out, _ = forward(state.variables, batch, False)
        return {"logits": out["logits"].astype(jnp.float32),
                "pooled": out["features"]["pooled"].astype(jnp.float32)}

    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step, in_shardings=(replicated, data), out_shardings=data)
