"""The train state: one pytree that jit steps, orbax checkpoints and vmap sweeps all take."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
    """``step``, trainable ``params``, BatchNorm ``batch_stats``, ``opt_state``, ``rng`` (raw
    uint32 key data, so checkpoints hold plain arrays) and ``anchor``: the starting
    variables that regularizers such as L2-SP compare against (``None`` when unused); ``bank``:
    the memory banks loss pieces keep over the training set (:class:`jtl.train.pieces.Bank`;
    ``None`` when unused).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    anchor: Any = None
    bank: Any = None

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def initial_state(params, batch_stats, opt_state, seed: int, mesh, anchor=None, bank=None) -> TrainState:
    """The state at step 0, replicated over ``mesh``; the rng is ``key(seed + 1)``."""
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats, opt_state,
                       jax.random.key_data(jax.random.key(seed + 1)), anchor, bank)
    return jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
