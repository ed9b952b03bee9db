"""orbax checkpoints of a run: async, the last N plus the best by a metric, resumable.

Layout: ``WORKDIR/checkpoints/<step>/{state, data}``: ``state`` the
:class:`TrainState` pytree, ``data`` the input iterator's state (JSON). orbax
writes each checkpoint into a temporary directory and renames it when complete,
so a run killed while saving leaves no checkpoint that restore would pick up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from jtl.errors import JtlError


class Checkpoints:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, best_metric: str = "", async_save: bool = True):
        self.directory = Path(directory).absolute()
        policies = [cm.LatestN(n=max(keep, 1))]
        if best_metric:
            policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], reverse=True, n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step() if self.best_metric else None

    def save(self, step: int, state, data_state: dict | None, metrics: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (metrics or {}).items() if k == self.best_metric} or None
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})),
            metrics=metrics,
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise JtlError(
                f"checkpoint {self.directory / str(step)} does not fit this run's model/optimizer ({str(e).splitlines()[0][:200]}); "
                "use a fresh --workdir"
            ) from None
        return out["state"], dict(out["data"] or {})

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_variables(workdir: str | os.PathLike, which: str = "best") -> dict:
    """``{"params", "batch_stats"}`` of a finished run (its best checkpoint, else its latest)."""
    ckpt_dir = Path(workdir).absolute() / "checkpoints"
    if not ckpt_dir.is_dir():
        raise JtlError(f"{workdir} has no checkpoints/ (not a jtl run directory)")
    from absl import logging as absl_logging  # noqa: PLC0415

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # read-only managers warn about being read-only
    try:
        mngr = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data"),
                                     options=ocp.CheckpointManagerOptions(read_only=True))
    finally:
        absl_logging.set_verbosity(level)
    step = (mngr.best_step() if which == "best" else None) or mngr.latest_step()
    if step is None:
        raise JtlError(f"{ckpt_dir} holds no complete checkpoint")
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mngr.close()
    as_np = lambda t: jax.tree.map(np.asarray, t)
    return {"params": as_np(restored["params"]), "batch_stats": as_np(restored["batch_stats"]), "step": step}
