"""SWAD: dense weight averaging over the overfit-aware window (Cha et al. 2021, "SWAD: Domain
generalization by seeking flat minima", NeurIPS).

During training the step adds every iterate's parameters to the sum of its *segment*, the
``eval_every`` updates that end at an evaluation (segment ``k``: updates ``k E + 1 .. (k + 1) E``),
so the dense average over any run of whole segments is exact. After training, the window is
chosen from the validation loss ``e_k`` (mean cross-entropy over the source domains' val
splits at evaluation ``k``, read from the saved predictions):

- start ``t_s``: the first ``k`` whose loss is the lowest of ``e_k .. e_{k + N_s - 1}`` (the loss
  stopped falling), ``N_s`` = ``dg.swad_n_converge``;
- threshold ``(1 + r) mean(e_{t_s} .. e_{t_s + N_s - 1})``, ``r`` = ``dg.swad_tolerance_ratio``;
- segments ``j >= t_s`` are averaged while ``min(e_j .. e_{j + N_e - 1}) <= threshold``
  (``N_e`` = ``dg.swad_n_tolerance``; the look-ahead is cut at the last evaluation): the end
  ``t_e`` is the last one before validation loss stays above the threshold (overfitting).

If the loss never stops falling, the window is the segment of the lowest loss to the end.
The averaged model's BatchNorm statistics are recomputed on ``dg.swad_bn_batches`` training
batches (the mean of the batch statistics, unbiased variance, as ``torch.optim.swa_utils.update_bn``),
and it is evaluated on every eval split: ``summary["swad"]``. Its parameters and recomputed
statistics are saved as an orbax checkpoint, ``WORKDIR/swad_checkpoint/<last step of the window>/``,
which ``jtl eval --checkpoint swad`` and ``jtl predict --checkpoint swad`` load.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jtl.distributed import is_writer, sync
from jtl.errors import ConfigError
from jtl.train.checkpoint import SWAD_DIR, Checkpoints
from jtl.train.metrics import classification_metrics


def check_config(cfg) -> None:
    if not cfg.eval_every:
        raise ConfigError("dg.swad needs eval_every > 0: its window is chosen from the validation loss at each eval")
    if not cfg.save_predictions:
        raise ConfigError("dg.swad needs save_predictions=True: the validation loss is read from the predictions")
    if min(cfg.dg.swad_n_converge, cfg.dg.swad_n_tolerance) < 1 or cfg.dg.swad_bn_batches < 1:
        raise ConfigError("dg.swad_n_converge, dg.swad_n_tolerance and dg.swad_bn_batches must be >= 1")


def num_segments(cfg) -> int:
    return math.ceil(cfg.total_steps / cfg.eval_every)


def eval_steps(cfg) -> list[int]:
    """The steps at which the loop evaluates: every ``eval_every``, and the last."""
    return sorted({*range(cfg.eval_every, cfg.total_steps + 1, cfg.eval_every), cfg.total_steps})


def empty_sums(params, segments: int) -> dict:
    """``{"sums": params with a leading segment axis, all zero, "counts": (segments,)}``."""
    return {"sums": jax.tree.map(lambda p: np.zeros((segments, *np.shape(p)), np.float32), params),
            "counts": np.zeros((segments,), np.float32)}


def accumulate(sums: dict, params, segment) -> dict:
    """Add one iterate to its segment's sum (inside the jitted step)."""
    return {"sums": jax.tree.map(lambda s, p: s.at[segment].add(p.astype(s.dtype)), sums["sums"], params),
            "counts": sums["counts"].at[segment].add(1.0)}


def select_window(losses, n_converge: int = 3, n_tolerance: int = 6, tolerance_ratio: float = 0.3) -> tuple[int, int]:
    """``(t_s, t_e)``: the first and last evaluation index of the averaging window (module docstring)."""
    e = np.asarray(losses, np.float64)
    k = len(e)
    start = next((i for i in range(k - n_converge + 1) if e[i] <= e[i:i + n_converge].min()), None)
    if start is None:  # never stopped falling within the run
        return int(np.argmin(e)), k - 1
    threshold = (1.0 + tolerance_ratio) * e[start:start + n_converge].mean()
    end = start
    for j in range(start + 1, k):
        if e[j:j + n_tolerance].min() > threshold:
            break
        end = j
    return start, end


def average(sums: dict, start: int, end: int):
    """The dense average of the iterates of segments ``start..end``."""
    count = np.asarray(sums["counts"])[start:end + 1].sum()
    return jax.tree.map(lambda s: np.asarray(s)[start:end + 1].sum(0) / count, sums["sums"])


def validation_losses(workdir: Path, labels, steps) -> list[float]:
    """Mean cross-entropy over the ``labels`` (val splits) at each of ``steps``, from ``predictions/``."""
    out = []
    for step in steps:
        per_split = []
        for label in labels:
            f = Path(workdir) / "predictions" / f"{label}-{step}.npz"
            with np.load(f) as p:
                z, y = p["logits"].astype(np.float64), p["labels"]
            z = z - z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            per_split.append(-logp[np.arange(len(y)), y].mean())
        out.append(float(np.mean(per_split)))
    return out


def batch_statistics(train_forward, variables: dict, batch: dict, key):
    """The batch's own BatchNorm statistics, whatever each layer's momentum ``m``: one train-mode
    pass from zero running statistics gives ``m s``, one from ones gives ``(1 - m) + m s``."""
    zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    ones = jax.tree.map(jnp.ones_like, variables["batch_stats"])
    _, u0 = train_forward({"params": variables["params"], "batch_stats": zeros}, batch, True, key)
    _, u1 = train_forward({"params": variables["params"], "batch_stats": ones}, batch, True, key)
    return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), u0, u1)


def recompute_batch_stats(task, variables: dict, num_batches: int, seed: int) -> dict:
    """Mean of :func:`batch_statistics` over ``num_batches`` training batches of ``task``."""
    stats_of = jax.jit(lambda v, b, k: batch_statistics(task.forward, v, b, k))
    total = None
    for i in range(num_batches):
        batch = {k: jnp.asarray(v) for k, v in task.prepare(next(task.train_iterator)).items()}
        s = stats_of(variables, batch, jax.random.key(seed + i))
        total = s if total is None else jax.tree.map(jnp.add, total, s)
    return jax.tree.map(lambda t: np.asarray(t) / num_batches, total)


def evaluate(task, variables: dict) -> dict:
    """``{label: classification_metrics}`` of ``variables`` on every eval split of ``task``."""
    logits_of = jax.jit(lambda v, b: task.forward(v, b, False)[0]["logits"])
    out = {}
    for label, make_it in task.eval_iterators.items():
        logits, labels = [], []
        for batch in make_it():
            mask = np.asarray(batch.pop("mask", np.ones(len(batch["label"]), bool)))
            logits.append(np.asarray(logits_of(variables, {"image": jnp.asarray(batch["image"])}))[mask])
            labels.append(np.asarray(batch["label"])[mask])
        out[label] = classification_metrics(np.concatenate(logits), np.concatenate(labels))
    return out


def save_checkpoint(workdir, step: int, variables: dict) -> Path:
    """``variables`` (``params``, ``batch_stats``) as the orbax checkpoint ``WORKDIR/swad_checkpoint/<step>/``
    (what :func:`jtl.train.checkpoint.restore_variables` reads with ``"swad"``). Written whole into
    ``swad_checkpoint.partial/`` first, then swapped in: a rerun of a finished run replaces the
    earlier one, and a run killed meanwhile leaves the earlier one (or none), never half of one."""
    final = Path(workdir).absolute() / SWAD_DIR
    partial, old = final.with_name(SWAD_DIR + ".partial"), final.with_name(SWAD_DIR + ".old")
    if is_writer():
        shutil.rmtree(partial, ignore_errors=True)
    sync("jtl-swad-checkpoint-clean")
    ckpt = Checkpoints(partial, keep=1, async_save=False)
    try:
        ckpt.save(step, variables, None)
    finally:
        ckpt.close()
    if is_writer():
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    sync("jtl-swad-checkpoint-saved")
    return final / str(step)


def finish(task, workdir, state, summary: dict) -> dict:
    """``summary`` plus ``swad``: the window (steps), the validation losses, and the averaged
    model's metrics on every eval split (``swad.final``); unchanged when the run has no ``dg.swad``."""
    cfg = task.cfg
    if not cfg.dg.swad:
        return summary
    steps = eval_steps(cfg)
    val_labels = [f"val_{task.names[i]}" for i in task.train_ids]
    losses = validation_losses(Path(workdir), val_labels, steps)
    d = cfg.dg
    start, end = select_window(losses, d.swad_n_converge, d.swad_n_tolerance, d.swad_tolerance_ratio)
    params = average(jax.device_get(state.opt_state["swad"]), start, end)
    variables = {"params": params, "batch_stats": jax.device_get(state.batch_stats)}
    variables["batch_stats"] = recompute_batch_stats(task, variables, d.swad_bn_batches, cfg.seed)
    first_step = (steps[start - 1] if start else 0) + 1
    save_checkpoint(workdir, steps[end], variables)
    return {**summary, "swad": {"window_steps": [first_step, steps[end]], "eval_steps": steps,
                                "val_loss": losses, "checkpoint": f"{SWAD_DIR}/{steps[end]}",
                                "final": evaluate(task, variables)}}
