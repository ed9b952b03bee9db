"""The trainer: one top-to-bottom loop for every recipe (fine-tuning, probes, adaptation).

``train(cfg, workdir)`` builds data, model, optimizer and state from the
config, resumes from the newest checkpoint in ``workdir`` if there is one,
runs the compiled step ``total_steps`` times with evaluation, logging and
checkpoints in between, and writes ``summary.json``. What differs between
recipes is the forward pass and the loss pieces (:mod:`jtl.train.pieces`),
never the loop.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtl.errors import JtlError
from jtl.train import runinfo
from jtl.train.checkpoint import Checkpoints
from jtl.train.metrics import SCALAR_KEYS, classification_metrics
from jtl.train.steps import jit_train_step, make_eval_step, make_loss_fn, make_mesh, make_train_step, shard_batch
from jtl.train.writer import MetricWriter


class NonFiniteLoss(JtlError):
    """The loss became NaN or inf."""


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
        step = self.ckpt.latest_step() if step is None else step
        if step is None:
            return self.task.state, None, None
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.task.state)
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
                        f"({', '.join(bad)}); stopped, last good checkpoint: {where}"
                    )
            return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}

        try:
            for step in range(start + 1, cfg.total_steps + 1):
                batch = shard_batch(self.mesh, task.prepare(next(data_it)))
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
            return summary
        finally:
            if bar is not None:
                bar.close()
            writer.close()
            self.ckpt.close()


def _progress(cfg, start):
    if not cfg.progress:
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=cfg.total_steps, initial=start, unit="step", dynamic_ncols=True, leave=False)


def train(cfg, workdir: str | os.PathLike) -> dict:
    """Train (or resume) the run ``cfg`` in ``workdir``; returns the summary."""
    return Trainer(cfg, workdir).run()
