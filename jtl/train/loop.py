"""The trainer: one top-to-bottom loop for every recipe (fine-tuning, probes, adaptation).

``train(cfg, workdir)`` builds data, model, optimizer and state from the
config, resumes from the newest checkpoint in ``workdir`` if there is one,
runs the compiled step ``total_steps`` times with evaluation, logging and
checkpoints in between, and writes ``summary.json``. What differs between
recipes is the forward pass and the loss pieces (:mod:`jtl.train.pieces`),
never the loop.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtl.errors import DataError, JtlError
from jtl.train import runinfo
from jtl.train.checkpoint import Checkpoints
from jtl.train.metrics import SCALAR_KEYS, classification_metrics
from jtl.train.steps import jit_train_step, make_eval_step, make_loss_fn, make_mesh, make_train_step, shard_batch
from jtl.train.writer import MetricWriter


class NonFiniteLoss(JtlError):
    """The loss became NaN or inf."""


class DiskFull(JtlError):
    """The workdir's file system ran out of space (or quota)."""


def check_finite_batch(batch, where: str) -> None:
    """Refuse a float input batch holding NaN or inf (uint8 images cannot; cached features and float files can)."""
    for leaf in jax.tree.leaves(batch):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise DataError(f"{where} holds NaN or inf values ({int((~np.isfinite(a)).sum())} of {a.size}); "
                            "fix the data source, nothing was trained on it")


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, raised directly or wrapped by orbax/tensorstore in another exception."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def enable_compilation_cache() -> None:
    """jax's persistent compilation cache under ``$JTL_CACHE/xla`` (re-runs skip compiling)."""
    from jtl.weights.registry import cache_dir  # noqa: PLC0415

    path = os.environ.get("JTL_COMPILATION_CACHE", str(cache_dir() / "xla"))
    if path and path != "0" and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


class Trainer:
    """State of one run; :meth:`run` is the loop. Built by :func:`train`."""

    def __init__(self, cfg, workdir: str | os.PathLike, task=None):
        from jtl.train.tasks import build_task  # noqa: PLC0415

        enable_compilation_cache()
        self.cfg, self.workdir = cfg, Path(workdir).absolute()
        runinfo.prepare_workdir(self.workdir, cfg)
        self.mesh = make_mesh()
        self.task = task or build_task(cfg, self.mesh, self.workdir)
        t = self.task
        loss_fn = make_loss_fn(t.forward, cfg.loss, cfg.loss_options.to_dict(), cfg.total_steps, t.head_regex,
                               apply_head=getattr(t, "apply_head", None))
        step = t.make_step(loss_fn) if hasattr(t, "make_step") else make_train_step(loss_fn, t.tx, accum=cfg.grad_accum_steps)
        self.train_step = jit_train_step(step, self.mesh)
        self.eval_step = make_eval_step(t.forward, self.mesh)
        self.ckpt = Checkpoints(self.workdir / "checkpoints", keep=cfg.keep_checkpoints, best_metric=cfg.best_metric)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, state, splits: dict | None = None, step: int | None = None) -> dict[str, dict]:
        """Metrics on each named eval split: {label: classification_metrics(...)}.

        With ``save_predictions``, also writes ``predictions/<label>-<step>.npz`` (logits,
        pooled features, labels): what model selection without target labels needs.
        """
        results = {}
        for label, make_it in (splits or self.task.eval_iterators).items():
            logits, pooled, labels = [], [], []
            for batch in make_it():
                mask = np.asarray(batch.pop("mask", np.ones(len(batch["label"]), bool)))
                check_finite_batch(batch["image"], f"an input batch of eval split {label!r}")
                out = jax.device_get(self.eval_step(state, shard_batch(self.mesh, batch)))
                logits.append(np.asarray(out["logits"])[mask])
                pooled.append(np.asarray(out["pooled"])[mask])
                labels.append(np.asarray(batch["label"])[mask])
            logits, labels = np.concatenate(logits), np.concatenate(labels)
            results[label] = classification_metrics(logits, labels)
            if self.cfg.save_predictions and step is not None:
                folder = self.workdir / "predictions"
                folder.mkdir(exist_ok=True)
                tmp = folder / f".{label}-{step}.npz"
                np.savez(tmp, logits=logits, features=np.concatenate(pooled), labels=labels)
                os.replace(tmp, folder / f"{label}-{step}.npz")
        return results

    def restore(self, step: int | None = None):
        """``(state, data_state, step)`` from checkpoint ``step`` (default: the latest), or the initial state."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.task.state)
        if step is None:  # the newest intact checkpoint; damaged newer ones are detected and set aside
            found = self.ckpt.restore_latest(abstract)
            if found is None:
                return self.task.state, None, None
            restored, data_state, step = found
        else:
            restored, data_state = self.ckpt.restore(step, abstract)
        state = jax.device_put(restored, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
        return state, data_state, step

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, task = self.cfg, self.task
        data_it = task.train_iterator
        state, data_state, latest = self.restore()
        start = latest or 0
        if data_state is not None:
            data_it.set_state(data_state)
        writer = MetricWriter(self.workdir, resume_step=start)
        pending: list[dict] = []
        last_good = latest
        images = 0
        t_start = t_log = time.perf_counter()
        first_step_s = None
        finished = False
        bar = _progress(cfg, start)

        def flush(step: int) -> dict:
            """Fetch pending step metrics, stop on a non-finite loss, return their mean."""
            if not pending:
                return {}
            fetched = jax.device_get(pending)
            pending.clear()
            for i, m in enumerate(fetched):
                bad = {k: float(v) for k, v in m.items() if k.startswith("loss") and not math.isfinite(float(v))}
                if bad:
                    where = f"step {last_good} in {self.ckpt.directory}" if last_good is not None else "none"
                    raise NonFiniteLoss(
                        f"loss became {next(iter(bad.values()))} at step {step - len(fetched) + i + 1} "
                        f"({', '.join(bad)}); stopped, last good checkpoint: {where}; "
                        "lower optim.lr, set optim.clip_norm or check the data, then use a fresh --workdir"
                    )
            return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}

        try:
            for step in range(start + 1, cfg.total_steps + 1):
                host_batch = task.prepare(next(data_it))
                check_finite_batch(host_batch, f"the input batch of step {step} (data.train={cfg.data.train!r})")
                batch = shard_batch(self.mesh, host_batch)
                state, metrics = self.train_step(state, batch)
                pending.append(metrics)
                images += task.images_per_step
                if first_step_s is None:
                    jax.block_until_ready(metrics)
                    first_step_s = time.perf_counter() - t_start
                last = step == cfg.total_steps
                row: dict[str, Any] = {}
                if last or (cfg.log_every and step % cfg.log_every == 0):
                    row.update({f"train/{k}": v for k, v in flush(step).items()})
                    now = time.perf_counter()
                    row["train/images_per_s"] = images / max(now - t_log, 1e-9)
                    row["train/lr"] = float(task.lr(step))
                    images, t_log = 0, now
                    if bar is not None:
                        bar.set_postfix(loss=f"{row.get('train/loss', float('nan')):.4f}",
                                        img_s=f"{row['train/images_per_s']:.0f}")
                eval_due = last or (cfg.eval_every and step % cfg.eval_every == 0)
                ckpt_due = last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                if eval_due:
                    row.update({f"train/{k}": v for k, v in flush(step).items()})
                    evaluated = self.evaluate(state, step=step)
                    for label, m in evaluated.items():
                        row.update({f"{label}/{k}": m[k] for k in SCALAR_KEYS})
                        row[f"{label}/per_class_accuracy"] = m["per_class_accuracy"]
                if row:
                    writer.write(step, row)
                if ckpt_due:
                    flush(step)  # never checkpoint a state that came from a non-finite loss
                    if not bool(_all_finite(state.variables)):  # nor one that overflowed with a finite loss
                        where = f"step {last_good} in {self.ckpt.directory}" if last_good is not None else "none"
                        raise NonFiniteLoss(
                            f"parameters became NaN or inf by step {step}; stopped, last good checkpoint: {where}; "
                            "lower optim.lr, set optim.clip_norm or check the data, then use a fresh --workdir")
                    self.ckpt.save(step, state, data_it.get_state(), row)
                    last_good = step
                if bar is not None:
                    bar.update(1)
            self.ckpt.wait()
            final = evaluated if start < cfg.total_steps else self.evaluate(state)
            wall = time.perf_counter() - t_start
            summary = {
                "step": cfg.total_steps,
                "final": final,
                "best_step": self.ckpt.best_step(),
                "wall_time_s": wall,
                "time_to_first_step_s": first_step_s,
                "resumed_from": latest,
            }
            runinfo.write_json(self.workdir / "summary.json", summary)
            self.state = state
            finished = True
            return summary
        except Exception as e:
            if isinstance(e, JtlError) or not _disk_full(e):
                raise
            raise self._disk_full_error(e) from None
        finally:
            if bar is not None:
                bar.close()
            writer.close()
            try:
                self.ckpt.close()  # waits for an async save still being written
            except Exception as e:
                if finished:  # otherwise the error already on its way out says more
                    raise (self._disk_full_error(e) if _disk_full(e) else e) from None

    def _disk_full_error(self, e: BaseException) -> DiskFull:
        return DiskFull(f"no space left on the device of {self.workdir} ({type(e).__name__}); free space or move "
                        "the workdir, then rerun the same command to resume from its last complete checkpoint")


def _progress(cfg, start):
    if not cfg.progress:
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=cfg.total_steps, initial=start, unit="step", dynamic_ncols=True, leave=False)


def train(cfg, workdir: str | os.PathLike) -> dict:
    """Train (or resume) the run ``cfg`` in ``workdir``; returns the summary."""
    return Trainer(cfg, workdir).run()
