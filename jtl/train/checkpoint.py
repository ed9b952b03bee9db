"""orbax checkpoints of a run: async, the last N plus the best by a metric, resumable.

Layout: ``WORKDIR/checkpoints/<step>/{state, data}``: ``state`` the
:class:`TrainState` pytree, ``data`` the input iterator's state (JSON). orbax
writes each checkpoint into a temporary directory and renames it when complete,
so a run killed while saving leaves no checkpoint that restore would pick up.

Integrity: ``data`` also holds a CRC-32 of every array of the state, taken from
the values being saved. Restoring recomputes them, so a checkpoint whose files
were damaged afterwards (bit flips, truncation, a missing item) is detected
(:class:`CorruptCheckpoint`) rather than trained on. Resumption then falls back
to the newest intact checkpoint and moves the damaged ones to
``WORKDIR/checkpoints.corrupt/`` (kept for inspection, never deleted).

Several processes: every process calls save and restore (orbax writes each array
once and the JSON item from process 0); the state is restored replicated over all
devices of all processes, and only process 0 moves damaged checkpoints aside.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from jtl.distributed import is_writer, sync
from jtl.errors import JtlError
from jtl.models.transfer import is_transfer_layout
from jtl.train.layout import current_layout
from jtl.train.runinfo import read_config_json

_CRC_KEY, _ITER_KEY = "jtl_crc32", "iterator"
SWAD_DIR = "swad_checkpoint"  # a dg.swad run's averaged model: WORKDIR/swad_checkpoint/<step>/


class CorruptCheckpoint(JtlError):
    """A checkpoint whose files cannot be read back to the values that were saved."""


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)  # replicated state: this process's copy
    return np.asarray(jax.device_get(x))


def checksums(tree) -> dict[str, int]:
    """``{path: crc32 of the array's bytes}`` for every leaf of ``tree``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(_host(leaf))
        out["/".join(_key_name(k) for k in path)] = zlib.crc32(a.view(np.uint8).reshape(-1)) if a.size else 0
    return out


def _key_name(k) -> str:
    """A path entry as orbax names it: dict keys, dataclass/namedtuple fields and tuple indices alike."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _is_mismatch(e: Exception) -> bool:
    """orbax's words for a checkpoint of another model/optimizer (as opposed to damaged files)."""
    msg = str(e)
    return isinstance(e, ValueError) and ("not compatible with the stored shape" in msg or "Structure mismatch" in msg)


def _restore_step(manager, step: int, directory: Path, abstract_state=None) -> tuple[Any, dict]:
    """Restore and verify one step: ``(state, iterator state)``; CorruptCheckpoint or a mismatch JtlError."""
    where = directory / str(step)
    abstract_state, rebuild = _fields_on_disk(where / "state", _restore_target(where / "state", abstract_state))
    try:
        out = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = first.split(" See full")[0].split(" Truncating/padding")[0][:200]  # orbax's advice does not apply
        if _is_mismatch(e):
            raise JtlError(
                f"checkpoint {where} does not fit this run's model/optimizer ({first}); use a fresh --workdir"
            ) from None
        raise CorruptCheckpoint(f"checkpoint {where} is unreadable ({type(e).__name__}: {first})") from None
    data = dict(out["data"] or {})
    out = {**out, "state": rebuild(out["state"])}
    if set(data) != {_CRC_KEY, _ITER_KEY}:
        return out["state"], data  # written before checksums were recorded: nothing to verify
    want, got = data[_CRC_KEY], checksums(out["state"])
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
        raise CorruptCheckpoint(f"checkpoint {where} is corrupt: {len(bad)} array(s) fail their checksum, e.g. {bad[0]}")
    return out["state"], dict(data[_ITER_KEY] or {})


def _fields_on_disk(item_dir: Path, abstract_state):
    """``(target, rebuild)``: a train state's optional fields that are None here and absent from a
    checkpoint written before they existed (``bank``) are left out of the restore and put back as
    None by ``rebuild``, so such a checkpoint resumes; any other difference is orbax's to report."""
    import dataclasses  # noqa: PLC0415

    if not dataclasses.is_dataclass(abstract_state):
        return abstract_state, lambda s: s
    try:
        stored = getattr(ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir)), "tree", None)
    except Exception:  # noqa: BLE001 - unreadable metadata: let restore report the damage
        return abstract_state, lambda s: s
    names = [f.name for f in dataclasses.fields(abstract_state)]
    absent = [n for n in names if isinstance(stored, dict) and n not in stored and getattr(abstract_state, n) is None]
    if not absent:
        return abstract_state, lambda s: s
    target = {n: getattr(abstract_state, n) for n in names if n not in absent}
    return target, lambda s: abstract_state.replace(**dict(s), **{n: None for n in absent})


def _restore_target(item_dir: Path, abstract_state):
    """Where the restored arrays go, whatever devices the checkpoint was written from (one or
    four devices, one or several processes): a ``restore_variables`` read without a target goes
    to the first device (its shapes come from the checkpoint's metadata), a trainer's state is
    replicated over all devices of all processes.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding  # noqa: PLC0415

    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    if abstract_state is None:
        try:
            metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
        except Exception:  # noqa: BLE001 - unreadable metadata: let restore report the damage
            return None
        abstract_state = getattr(metadata, "tree", metadata)
        if jax.process_count() == 1:
            replicated = SingleDeviceSharding(jax.local_devices()[0])

    def target(x):
        if isinstance(x, jax.Array) or (isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None):
            return x
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            return x
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=replicated)

    return jax.tree.map(target, abstract_state)


class Checkpoints:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, best_metric: str = "", async_save: bool = True):
        self.directory = Path(directory).absolute()
        policies = [cm.LatestN(n=max(keep, 1))]
        best = {}
        if best_metric:
            # Higher is better. BestN keeps the n checkpoints that sort last (reverse=False), and
            # best_fn makes orbax store each checkpoint's metrics so best_step() can read them back.
            policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                                     keep_checkpoints_without_metrics=False))
            best = dict(best_fn=lambda m: m[best_metric], best_mode="max", keep_checkpoints_without_metrics=False)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            **best,
        )
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step() if self.best_metric else None

    def save(self, step: int, state, data_state: dict | None, metrics: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (metrics or {}).items() if k == self.best_metric} or None
        # Checksums of the values being saved, before the (donated) state can change.
        data = {_ITER_KEY: data_state or {}, _CRC_KEY: checksums(state)}
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
            metrics=metrics,
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """Checkpoint ``step`` (verified): ``(state, iterator state)``."""
        return _restore_step(self.manager, step, self.directory, abstract_state)

    def restore_latest(self, abstract_state) -> tuple[Any, dict, int] | None:
        """The newest intact checkpoint ``(state, iterator state, step)``, or None if there is none.

        Damaged newer checkpoints are logged and moved to ``checkpoints.corrupt/``; if every
        checkpoint is damaged, nothing is moved and :class:`CorruptCheckpoint` is raised.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged = []
        for step in steps:
            try:
                state, data = self.restore(step, abstract_state)
            except CorruptCheckpoint as e:
                print(f"jtl: warning: {e}; trying the previous checkpoint", file=sys.stderr)
                damaged.append(step)
                continue
            for bad in damaged:
                self._move_aside(bad)
            return state, data, step
        if damaged:
            raise CorruptCheckpoint(
                f"every checkpoint in {self.directory} is damaged (steps {', '.join(map(str, damaged))}); "
                f"move {self.directory} away to start the run over"
            )
        return None

    def _move_aside(self, step: int) -> None:
        """Move a damaged checkpoint out of the manager's directory (kept, not deleted)."""
        if is_writer():  # one process moves; the others wait for it
            dest_root = self.directory.parent / (self.directory.name + ".corrupt")
            dest_root.mkdir(exist_ok=True)
            dest = dest_root / str(step)
            if dest.exists():
                dest = dest_root / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(str(self.directory / str(step)), str(dest))
            print(f"jtl: warning: moved damaged checkpoint {self.directory / str(step)} to {dest}", file=sys.stderr)
        sync(f"jtl-checkpoint-moved-{step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_variables(workdir: str | os.PathLike, which: str = "best", *, strict: bool = False) -> dict:
    """``{"params", "batch_stats", "step"}`` of a run: ``which="latest"`` its newest checkpoint,
    ``"best"`` its best by the run's ``best_metric`` (read from its ``config.json``), else its
    newest, or with ``strict`` a one-line error when the run has no best checkpoint; ``"swad"``
    the averaged model a ``dg.swad`` run saves in ``swad_checkpoint/`` (:mod:`jtl.dg.swad`).

    Reads only: a read-only run directory works, and nothing is moved or written.
    """
    ckpt_dir = Path(workdir).absolute() / (SWAD_DIR if which == "swad" else "checkpoints")
    if which == "swad" and not ckpt_dir.is_dir():
        raise JtlError(f"{workdir} has no {SWAD_DIR}/ (only a run with dg.swad saves one, when it finishes)")
    if not ckpt_dir.is_dir():
        raise JtlError(f"{workdir} has no checkpoints/ (not a jtl run directory)")
    metric = _best_metric_of(workdir) if which == "best" else ""
    from absl import logging as absl_logging  # noqa: PLC0415

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # read-only managers warn about being read-only
    best_by = dict(best_fn=lambda m: m[metric], best_mode="max", keep_checkpoints_without_metrics=False) \
        if metric else {}
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, **best_by)
    try:
        mngr = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data"), options=options)
    finally:
        absl_logging.set_verbosity(level)
    best = mngr.best_step() if metric else None
    if strict and which == "best" and best is None:
        mngr.close()
        why = "it sets no best_metric" if not metric else f"no checkpoint has a {metric} value"
        raise JtlError(f"{workdir} has no best checkpoint ({why}); use --checkpoint latest")
    try:
        order = ([best] if best is not None else []) + sorted((s for s in mngr.all_steps() if s != best), reverse=True)
        if not order:
            raise JtlError(f"{ckpt_dir} holds no complete checkpoint")
        problems = []
        for step in order:  # the chosen checkpoint, else the newest intact one
            try:
                restored, _ = _restore_step(mngr, step, ckpt_dir)
                break
            except CorruptCheckpoint as e:
                print(f"jtl: warning: {e}; trying the previous checkpoint", file=sys.stderr)
                problems.append(str(step))
        else:
            raise CorruptCheckpoint(f"every checkpoint in {ckpt_dir} is damaged (steps {', '.join(problems)})")
    finally:
        mngr.close()
    as_np = lambda t: jax.tree.map(np.asarray, t)
    variables = {"params": as_np(restored["params"]), "batch_stats": as_np(restored["batch_stats"]) or {}}
    arch = (read_config_json(Path(workdir) / "config.json").get("model") or {}).get("name") \
        if not is_transfer_layout(variables["params"]) else None
    if arch:  # a run written before the transfer layout
        variables = current_layout(variables, arch)
    return {**variables, "step": step}


def _best_metric_of(workdir) -> str:
    """The ``best_metric`` a run was configured with ('' if none or unknown)."""
    try:
        return str(json.loads((Path(workdir) / "config.json").read_text()).get("best_metric", "") or "")
    except (OSError, ValueError):
        return ""
