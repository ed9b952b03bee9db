"""The trainer: one top-to-bottom loop for every recipe (fine-tuning, probes, adaptation).

``train(cfg, workdir)`` builds data, model, optimizer and state from the
config, resumes from the newest checkpoint in ``workdir`` if there is one,
runs the compiled step ``total_steps`` times with evaluation, logging and
checkpoints in between, and writes ``summary.json``. What differs between
recipes is the forward pass and the loss pieces (:mod:`jtl.train.pieces`),
never the loop.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtl.distributed import global_rows, is_writer
from jtl.errors import DataError, JtlError
from jtl.progress import phase, process_age_s, say
from jtl.train import bank, lock, record, runinfo
from jtl.train.build import build_task
from jtl.train.checkpoint import Checkpoints
from jtl.train.metrics import SCALAR_KEYS, classification_metrics
from jtl.train.steps import build_step, jit_train_step, make_eval_step, make_mesh, shard_batch
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


@dataclasses.dataclass
class Member:
    """One run of the loop: its config, workdir and checkpoints (a vectorized sweep has several)."""

    cfg: Any
    workdir: Path
    ckpt: Checkpoints
    writer: MetricWriter | None = None
    last_good: int | None = None
    failed: str | None = None


class Trainer:
    """State of one run; :meth:`run` is the loop. Built by :func:`train`.

    The loop drives ``members``: one for a plain run; several, with their states
    stacked, for a vectorized sweep (:class:`jtl.train.vector.VectorTrainer`,
    which overrides the hooks below the loop).
    """

    stacked = False

    def __init__(self, cfg, workdir: str | os.PathLike, task=None):
        enable_compilation_cache()
        self.cfg, self.workdir = cfg, Path(workdir).absolute()
        self._locks = [lock.acquire(self.workdir)]
        try:
            runinfo.prepare_workdir(self.workdir, cfg)
            self.mesh = make_mesh()
            self.task = task or build_task(cfg, self.mesh, self.workdir)
            record.write(self.workdir, cfg, self.task)
        except BaseException:
            self.release()
            raise
        self.train_step = jit_train_step(build_step(self.task, cfg), self.mesh)
        self.eval_step = make_eval_step(self.task.forward, self.mesh)
        self.ckpt = Checkpoints(self.workdir / "checkpoints", keep=cfg.keep_checkpoints, best_metric=cfg.best_metric)
        self.members = [Member(cfg, self.workdir, self.ckpt)]
        self.images_per_step = self.task.images_per_step

    def release(self) -> None:
        """Unlock the workdir(s) (done when :meth:`run` ends)."""
        for key in self._locks:
            lock.release(key)
        self._locks = []

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, state, splits: dict | None = None, step: int | None = None) -> dict[str, dict]:
        """Metrics on each named eval split: {label: classification_metrics(...)}.

        With ``save_predictions``, also writes ``predictions/<label>-<step>.npz`` (logits,
        pooled features, labels): what model selection without target labels needs.
        """
        results = {}
        for label, make_it in (splits or self.task.eval_iterators).items():
            outputs = self._pass(state, make_it, f"eval split {label!r}")
            results[label] = record_eval(self.members[0], label, step, *outputs)
        return results

    def _pass(self, state, make_it, what: str) -> tuple[list, list, list]:
        """``(logits, pooled, labels)`` batches of one ordered eval-mode pass over ``make_it()`` (padding dropped)."""
        logits, pooled, labels = [], [], []
        for batch in make_it():
            mask = np.asarray(batch.pop("mask", np.ones(len(batch["label"]), bool)))
            check_finite_batch(batch["image"], f"an input batch of {what}")
            out, mask, batch = global_rows(self.eval_step(state, shard_batch(self.mesh, batch)), mask, batch)
            logits.append(np.asarray(out["logits"])[mask])
            pooled.append(np.asarray(out["pooled"])[mask])
            labels.append(np.asarray(batch["label"])[mask])
        return logits, pooled, labels

    def _member_passes(self, state, iterator_of, what: str) -> list[tuple[list, list, list]]:
        """Per member, :meth:`_pass` over its task's iterator ``iterator_of(task)`` (memory-bank passes)."""
        return [self._pass(state, iterator_of(self.task), what)]

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

    # -- hooks of the loop (a vectorized sweep overrides them) --------------------------------
    def _start(self):
        """``(state, latest checkpointed step or None)``; the data iterator is put where it was."""
        state, data_state, latest = self.restore()
        if data_state is not None:
            self.task.train_iterator.set_state(data_state)
        return state, latest

    def _next_batch(self, step: int):
        host_batch = self.task.prepare(next(self.task.train_iterator))
        check_finite_batch(host_batch, f"the input batch of step {step} (data.train={self.cfg.data.train!r})")
        return shard_batch(self.mesh, host_batch)

    def _evaluate_members(self, state, step: int | None) -> list[dict]:
        return [self.evaluate(state, step=step)]

    def _member_state(self, state, i: int):
        return state

    def _task(self, i: int):
        return self.task

    def _data_state(self, i: int) -> dict:
        return self.task.train_iterator.get_state()

    def _lr(self, i: int, step: int) -> float:
        return float(self.task.lr(step))

    def _fail(self, member: Member, error: JtlError) -> None:
        """A member's run failed: a plain run stops with ``error`` (a sweep records it)."""
        raise error

    # -- the loop ------------------------------------------------------------------------------
    def run(self):
        """Train to ``total_steps``; the summary (a vectorized sweep: one per member, None if it failed).
        The workdir lock is released however the run ends."""
        try:
            return self._run()
        finally:
            self.release()

    def _run(self):
        cfg, members = self.cfg, self.members
        state, latest = self._start()
        start = latest or 0
        for m in members:
            m.writer, m.last_good = MetricWriter(m.workdir, resume_step=start), latest
        alive = lambda: [(i, m) for i, m in enumerate(members) if m.failed is None]
        pending: list[dict] = []
        images = 0
        t_start = t_log = time.perf_counter()
        first_step_s = since_process_start_s = None
        finished = False
        evaluated = None
        bar = _progress(cfg, start)

        def flush(step: int) -> list[dict]:
            """Fetch pending step metrics, stop a member on a non-finite loss; per member, their mean."""
            if not pending:
                return [{} for _ in members]
            fetched = jax.device_get(pending)
            pending.clear()
            means = []
            for i, m in enumerate(members):
                rows = [{k: (v[i] if self.stacked else v) for k, v in f.items()} for f in fetched]
                for j, r in enumerate(rows):
                    bad = {k: float(v) for k, v in r.items() if k.startswith("loss") and not math.isfinite(float(v))}
                    if bad and m.failed is None:
                        where = f"step {m.last_good} in {m.ckpt.directory}" if m.last_good is not None else "none"
                        self._fail(m, NonFiniteLoss(
                            f"loss became {next(iter(bad.values()))} at step {step - len(fetched) + j + 1} "
                            f"({', '.join(bad)}); stopped, last good checkpoint: {where}; "
                            "lower optim.lr, set optim.clip_norm or check the data, then use a fresh --workdir"))
                means.append({k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
            return means

        try:
            for step in range(start + 1, cfg.total_steps + 1):
                state = bank.refresh(self, state, step)  # memory banks whose pass is due (none: unchanged)
                batch = self._next_batch(step)
                if first_step_s is None:
                    with phase("compiling the train step and running step 1"):
                        state, metrics = self.train_step(state, batch)
                        jax.block_until_ready(metrics)
                    first_step_s = time.perf_counter() - t_start
                    since_process_start_s = process_age_s()
                else:
                    state, metrics = self.train_step(state, batch)
                pending.append(metrics)
                images += self.images_per_step
                last = step == cfg.total_steps
                rows: list[dict[str, Any]] = [{} for _ in members]
                if last or (cfg.log_every and step % cfg.log_every == 0):
                    means = flush(step)
                    now = time.perf_counter()
                    for i, _ in alive():
                        rows[i].update({f"train/{k}": v for k, v in means[i].items()})
                        rows[i]["train/images_per_s"] = images / max(now - t_log, 1e-9)
                        rows[i]["train/lr"] = self._lr(i, step)
                    images, t_log = 0, now
                    if bar is not None:
                        bar.set_postfix(loss=f"{rows[0].get('train/loss', float('nan')):.4f}",
                                        img_s=f"{rows[0].get('train/images_per_s', 0):.0f}")
                eval_due = last or (cfg.eval_every and step % cfg.eval_every == 0)
                ckpt_due = last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                if eval_due:
                    means = flush(step)
                    evaluated = self._evaluate_members(state, step)
                    for i, _ in alive():
                        rows[i].update({f"train/{k}": v for k, v in means[i].items()})
                        for label, m in evaluated[i].items():
                            rows[i].update({f"{label}/{k}": m[k] for k in SCALAR_KEYS})
                            rows[i][f"{label}/per_class_accuracy"] = m["per_class_accuracy"]
                    say(eval_line(step, cfg.total_steps, evaluated, [m.workdir.name for m in members]
                                  if self.stacked else None))
                for i, m in alive():
                    if rows[i]:
                        m.writer.write(step, rows[i])
                if ckpt_due:
                    flush(step)  # never checkpoint a state that came from a non-finite loss
                    for i, m in alive():
                        member_state = self._member_state(state, i)
                        if not bool(_all_finite(member_state.variables)):  # nor one that overflowed
                            where = f"step {m.last_good} in {m.ckpt.directory}" if m.last_good is not None else "none"
                            self._fail(m, NonFiniteLoss(
                                f"parameters became NaN or inf by step {step}; stopped, last good checkpoint: "
                                f"{where}; lower optim.lr, set optim.clip_norm or check the data, then use a "
                                "fresh --workdir"))
                            continue
                        m.ckpt.save(step, member_state, self._data_state(i), rows[i])
                        m.last_good = step
                if bar is not None:
                    bar.update(1)
            for m in members:
                m.ckpt.wait()
            final = evaluated if start < cfg.total_steps else self._evaluate_members(state, None)
            wall = time.perf_counter() - t_start
            summaries = []
            for i, m in enumerate(members):
                if m.failed is not None:
                    summaries.append(None)
                    continue
                summary = {
                    "step": cfg.total_steps,
                    "final": final[i],
                    "best_step": m.ckpt.best_step(),
                    "wall_time_s": wall,
                    "time_to_first_step_s": since_process_start_s,  # from process start: what a user waits
                    "first_step_s": first_step_s,  # from the loop's start: restore, first batch, compile, step 1
                    "resumed_from": latest,
                }
                if self.stacked:
                    summary["vectorized_members"] = len(members)
                finish = getattr(self._task(i), "finish", None)  # a task's work after training (SWAD)
                if finish is not None:
                    summary = finish(m.workdir, self._member_state(state, i), summary)
                runinfo.write_json(m.workdir / "summary.json", summary)
                summaries.append(summary)
            self.state = state
            finished = True
            return summaries if self.stacked else summaries[0]
        except Exception as e:
            if isinstance(e, JtlError) or not _disk_full(e):
                raise
            raise self._disk_full_error(e) from None
        finally:
            if bar is not None:
                bar.close()
            close_error = None
            for m in members:
                if m.writer is not None:
                    close_error = close_error or m.writer.close()  # never raises; returns its OSError
            for m in members:
                try:
                    m.ckpt.close()  # waits for an async save still being written
                except Exception as e:  # noqa: BLE001
                    close_error = close_error or e
            if close_error is not None and finished:  # otherwise the error already on its way out says more
                raise (self._disk_full_error(close_error) if _disk_full(close_error) else close_error) from None

    def _disk_full_error(self, e: BaseException) -> DiskFull:
        return DiskFull(f"no space left on the device of {self.workdir} ({type(e).__name__}); free space or move "
                        "the workdir, then rerun the same command to resume from its last complete checkpoint")


def record_eval(member: Member, label: str, step: int | None, logits, pooled, labels) -> dict:
    """Metrics of one eval split from its batches; with ``save_predictions`` (and a step),
    the logits, pooled features and labels go to ``predictions/<label>-<step>.npz``."""
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    result = classification_metrics(logits, labels)
    if member.cfg.save_predictions and step is not None and is_writer():
        folder = member.workdir / "predictions"
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{label}-{step}.npz"
        np.savez(tmp, logits=logits, features=np.concatenate(pooled), labels=labels)
        os.replace(tmp, folder / f"{label}-{step}.npz")
    return result


def eval_line(step: int, total: int, evaluated: list[dict], names: list[str] | None) -> str:
    """``step 500/1000: val top1 0.9123 top5 0.9987 macro-F1 0.9101 (n=360)`` (per member in a sweep)."""
    parts = []
    for i, results in enumerate(evaluated):
        who = f"[{names[i]}] " if names else ""
        parts += [f"{who}{label} top1 {m['top1']:.4f} top5 {m['top5']:.4f} macro-F1 {m['macro_f1']:.4f} "
                  f"(n={m['count']})" for label, m in results.items()]
    return f"step {step}/{total}: " + ("; ".join(parts) if parts else "no eval splits")


def _progress(cfg, start):
    if not cfg.progress or not is_writer():
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=cfg.total_steps, initial=start, unit="step", dynamic_ncols=True, leave=False)


def train(cfg, workdir: str | os.PathLike) -> dict:
    """Train (or resume) the run ``cfg`` in ``workdir``; returns the summary."""
    return Trainer(cfg, workdir).run()
