"""Sweep specifications: the runs of a sweep as override dicts.

A config file defines ``get_sweep(arg=None)`` returning a list of override dicts
(dotted config keys -> values; ``loss.NAME`` sets the weight of loss piece NAME)::

    from jtl.sweep import grid, random_search, log_uniform

    def get_sweep(arg=None):
        return grid({"loss.dann": [0.1, 0.3, 1.0], "seed": [0, 1, 2]})

:func:`grid` is the Cartesian product; :func:`random_search` is DomainBed's protocol
(Gulrajani & Lopez-Paz 2021): hyperparameter draw ``h`` samples every hyperparameter
from a generator seeded by ``(seed, h)`` (so draw ``h`` is the same whatever the
number of draws), crossed with trial seeds. Each run's workdir is
``SWEEP_DIR/<member_name>``, a hash of the config and the overrides, so the same
run always lands in the same directory and a rerun skips it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jtl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A distribution over one hyperparameter: ``sample(rng) -> value``."""

    sample: Callable[[np.random.Generator], Any]
    describe: str


def log_uniform(low: float, high: float) -> Sampler:
    """``exp(U(log low, log high))``, e.g. learning rates and loss weights."""
    if not 0 < low <= high:
        raise ConfigError(f"log_uniform needs 0 < low <= high, got {low}, {high}")
    return Sampler(lambda rng: float(math.exp(rng.uniform(math.log(low), math.log(high)))),
                   f"log_uniform({low}, {high})")


def uniform(low: float, high: float) -> Sampler:
    return Sampler(lambda rng: float(rng.uniform(low, high)), f"uniform({low}, {high})")


def choice(values: Sequence) -> Sampler:
    values = list(values)
    if not values:
        raise ConfigError("choice needs at least one value")
    return Sampler(lambda rng: values[int(rng.integers(len(values)))], f"choice({values})")


def grid(axes: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the values of ``axes`` (the last key varies fastest)."""
    keys = list(axes)
    for k in keys:
        if isinstance(axes[k], (str, bytes)) or not isinstance(axes[k], Sequence) or not axes[k]:
            raise ConfigError(f"grid axis {k!r} must be a non-empty list of values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def random_search(space: Mapping[str, Sampler | Any], n_hparams: int, trial_seeds: Sequence[int] = (0, 1, 2), *,
                  seed: int = 0, seed_key: str = "seed") -> list[dict]:
    """``n_hparams`` random draws from ``space`` x ``trial_seeds`` (DomainBed style).

    Values of ``space`` that are not :class:`Sampler` are fixed. Draw ``h`` uses
    ``np.random.default_rng([seed, h])``, independent of ``n_hparams``.
    """
    out = []
    for h in range(n_hparams):
        rng = np.random.default_rng([seed, h])
        drawn = {k: (v.sample(rng) if isinstance(v, Sampler) else v) for k, v in space.items()}
        out.extend({**drawn, seed_key: int(t)} for t in trial_seeds)
    return out


def canonical(overrides: Mapping[str, Any]) -> str:
    return json.dumps({k: overrides[k] for k in sorted(overrides)}, sort_keys=True, default=repr)


def member_name(config: str, overrides: Mapping[str, Any]) -> str:
    """The run's directory name: a hash of the config file's name + arg and the overrides."""
    return hashlib.sha256(f"{config}|{canonical(overrides)}".encode()).hexdigest()[:12]


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"optim.lr": 0.1}`` -> ``["optim.lr=0.1"]`` (values as Python literals)."""
    return [f"{k}={v!r}" for k, v in overrides.items()]


def load_sweep(spec: str) -> list[dict]:
    """The override dicts of config file ``spec`` (``path.py[:arg]``): its ``get_sweep(arg)``."""
    from jtl.config import call_config_file  # noqa: PLC0415

    path, _, arg = spec.partition(":")
    members = call_config_file(path, "get_sweep", arg)
    if not isinstance(members, (list, tuple)) or not all(isinstance(m, Mapping) for m in members):
        raise ConfigError(f"{path}: get_sweep must return a list of override dicts")
    if not members:
        raise ConfigError(f"{path}: get_sweep returned no runs")
    return [dict(m) for m in members]
