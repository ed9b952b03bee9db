"""Multi-process runs (TPU pods, GPU clusters, several processes on one machine).

Every process runs the same ``jtl train`` command on the same workdir (a file
system all of them see). :func:`initialize_from_env` joins them into one JAX
system before anything else touches JAX:

- ``JTL_COORDINATOR=host:port``, ``JTL_NUM_PROCESSES=N``, ``JTL_PROCESS_ID=i``
  (or ``jtl train --coordinator --num-processes --process-id``):
  ``jax.distributed.initialize(host:port, N, i)``. Process 0 listens on the port.
- ``JTL_DISTRIBUTED=auto``: ``jax.distributed.initialize()`` with no arguments,
  which reads the cluster's own environment (Cloud TPU metadata, SLURM, Open MPI).
- neither (or ``JTL_DISTRIBUTED=off``): a single process; nothing happens.

On CPU the cross-process collectives are gloo's (``jax_cpu_collectives_implementation``).
After it, ``jax.devices()`` lists the devices of every process; the trainer's mesh
spans them all, each process reads its slice of every global batch, and only
process 0 (:func:`is_writer`) writes ``metrics.jsonl``, TensorBoard events,
``config.json``, ``run_info.json``, ``summary.json`` and predictions. Checkpoints
are written by orbax, which every process calls.
"""

from __future__ import annotations

import os

import numpy as np

from jtl.errors import ConfigError

ENV_COORDINATOR = "JTL_COORDINATOR"
ENV_NUM_PROCESSES = "JTL_NUM_PROCESSES"
ENV_PROCESS_ID = "JTL_PROCESS_ID"
ENV_MODE = "JTL_DISTRIBUTED"


def _int(value, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None


def initialize_from_env(coordinator: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None, *, timeout_s: int | None = None) -> bool:
    """Join a multi-process run if one is configured; True if JAX is (now) multi-process.

    Arguments override the ``JTL_*`` environment variables. Must run before any other JAX
    call (a device query or computation starts JAX's backends, after which it is too late).
    Calling it again once initialised does nothing.
    """
    import jax  # noqa: PLC0415

    mode = os.environ.get(ENV_MODE, "").strip().lower()
    if mode not in ("", "auto", "off", "0"):
        raise ConfigError(f"{ENV_MODE}={mode!r}: use 'auto' (the cluster's own environment) or leave it unset")
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(os.environ.get(ENV_NUM_PROCESSES),
                                                                        ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int(os.environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    explicit = (coordinator, num_processes, process_id)
    if mode in ("off", "0") or (mode != "auto" and all(v is None for v in explicit)):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {} if timeout_s is None else {"initialization_timeout": int(timeout_s)}
    if mode == "auto":  # the cluster's environment fills in what is not given
        _use_gloo_on_cpu(jax)
        given = dict(zip(("coordinator_address", "num_processes", "process_id"), explicit))
        _initialize(jax, "the cluster's environment", **{k: v for k, v in given.items() if v is not None}, **kwargs)
        return True
    missing = [name for name, v in zip((ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID), explicit) if v is None]
    if missing:
        raise ConfigError(f"a multi-process run needs {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} "
                          f"(or --coordinator, --num-processes, --process-id); missing: {', '.join(missing)}")
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"coordinator {coordinator!r} must be HOST:PORT, e.g. 10.0.0.1:1234 (process 0's address)")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ConfigError(f"process id {process_id} of {num_processes} processes: need 0 <= id < count")
    if num_processes == 1:
        return False
    _use_gloo_on_cpu(jax)
    _initialize(jax, f"coordinator {coordinator}", coordinator_address=coordinator,
                num_processes=num_processes, process_id=process_id, **kwargs)
    return True


def _use_gloo_on_cpu(jax) -> None:
    """CPU devices of several processes reduce over gloo (TCP); GPUs/TPUs use their own collectives."""
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _initialize(jax, where: str, **kwargs) -> None:
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if "must be called before" in first:
            raise ConfigError("jtl.distributed.initialize_from_env() must run before any other JAX call "
                              "(call it first in the program)") from None
        raise ConfigError(f"could not join the multi-process run via {where}: {first}") from None
    except ValueError as e:  # auto-detection found no cluster
        raise ConfigError(f"could not join the multi-process run via {where}: {e}") from None


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge  # noqa: PLC0415

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        return True


def process_index() -> int:
    """This process's index; 0 without starting JAX when it is not running yet (a single process)."""
    import jax  # noqa: PLC0415

    if not jax.distributed.is_initialized() and not _backends_started():
        return 0
    return jax.process_index()


def process_count() -> int:
    import jax  # noqa: PLC0415

    if not jax.distributed.is_initialized() and not _backends_started():
        return 1
    return jax.process_count()


def is_writer() -> bool:
    """Whether this process writes a run's files (process 0; always true for a single process)."""
    return process_index() == 0


def sync(name: str) -> None:
    """A barrier across all processes (nothing for one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


def global_rows(out: dict, mask, batch: dict) -> tuple[dict, np.ndarray, dict]:
    """The eval step's output ``out`` (sharded along ``data``) with this process's ``mask`` and
    ``batch["label"]`` -> ``(out, mask, batch)`` as host arrays of the whole global batch.

    With one process this is ``jax.device_get(out)``. With several, mask and labels are laid
    out like the output (``make_array_from_process_local_data`` on its sharding) and every
    array is gathered to every process, in the global batch's row order.
    """
    import jax  # noqa: PLC0415

    if process_count() == 1:
        return jax.device_get(out), mask, batch
    from jax.experimental import multihost_utils  # noqa: PLC0415

    sharding = next(iter(out.values())).sharding
    local = {"mask": np.asarray(mask), "label": np.asarray(batch["label"])}
    extra = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
    got = multihost_utils.process_allgather({**out, **extra}, tiled=True)
    rows = {k: np.asarray(v) for k, v in got.items()}
    return {k: rows[k] for k in out}, rows["mask"], {**batch, "label": rows["label"]}
