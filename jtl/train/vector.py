"""Vectorized sweeps: runs that differ only in numbers train as one compiled program.

Members of a group share every structural setting (model, data, loss pieces, step
counts, which optional terms are on); they may differ in the keys matched by
:data:`VECTOR_KEY`: the seed, learning rate, weight decay, momentum, schedule
constants, clipping norm, loss weights (``loss.NAME``) and float loss options.
Their train states are stacked along a leading member axis and the step is

    step_K(values, states, batch) = vmap(step)(values, states, batch)

where ``step`` is the one-run step built (:func:`jtl.train.steps.build_step`) from a
config whose swept numbers are the tracers ``values[k]``: the same function a run
alone compiles, so a member computes what it would alone. Members with different
seeds start from their own initial state and read their own data order (batches
stacked per member); members with the same seed share one iterator (one batch,
broadcast). Members may also start from different weights (``model.init``, e.g. each
seed's source-only run). The member axis is sharded over the devices when it divides evenly.
Every member keeps its own workdir: config, metrics, evaluation, predictions,
checkpoints and summary, as a run alone writes them (:class:`VectorTrainer`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jtl.errors import JtlError
from jtl.train import lock, record, runinfo
from jtl.train.build import build_task
from jtl.train.checkpoint import Checkpoints
from jtl.train.loop import Member, Trainer, check_finite_batch, enable_compilation_cache, record_eval
from jtl.train.steps import build_step, make_mesh

VECTOR_KEY = re.compile(
    r"^(seed|optim\.(lr|weight_decay|momentum|inv_gamma|inv_power|clip_norm)|loss\.[^.]+|loss_options\.[^.]+\.[^.]+)$")
# Terms switched on by a non-zero value: members must agree on which are on (the optimizer's structure).
SWITCHES = ("optim.weight_decay", "optim.momentum", "optim.clip_norm")
IGNORED = ("progress",)  # differences that change nothing computed
# Keys that only choose a member's initial state and data order: one task per distinct value.
INITIAL = ("seed", "model.init")


class NotVectorizable(JtlError):
    """These configurations cannot train as one program (they differ in structure)."""


def flatten(cfg) -> dict[str, Any]:
    """``{"optim.lr": 0.01, ..., "loss": ("ce", "dann"), "loss.ce": 1.0, "loss.dann": 1.0}``."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                out[key] = v
            if key == "loss":  # the pieces (and their order) are structure; their weights are numbers
                out["loss"] = tuple(v)

    walk("", cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    return out


def _swept(key: str, value) -> bool:
    """A value that may differ between members of one group."""
    if not VECTOR_KEY.match(key) or isinstance(value, bool):
        return False
    if key.startswith("loss_options."):
        return isinstance(value, float)  # ints (top-k, widths) and flags are structure
    return isinstance(value, (int, float))


def structure_key(cfg) -> str:
    """Equal for configurations that can train as one vectorized program."""
    flat = flatten(cfg)
    fixed = {k: v for k, v in flat.items() if not _swept(k, v) and k not in IGNORED + INITIAL}
    switches = {k: bool(flat[k]) for k in SWITCHES}
    return json.dumps([fixed, switches], sort_keys=True, default=str)


def plan_groups(cfgs: Sequence) -> list[list[int]]:
    """Indices of ``cfgs`` grouped by :func:`structure_key` (first appearance order).

    Linear probes (cached features per workdir) and multi-process runs are never grouped.
    """
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        key = structure_key(cfg)
        if cfg.recipe == "linear_probe" or jax.process_count() > 1:
            key = f"{key}#{i}"
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def swept_values(cfgs: Sequence) -> dict[str, np.ndarray]:
    """The traced numbers of a group: each key (but the seed) whose value differs, one entry per member."""
    flats = [flatten(c) for c in cfgs]
    out = {}
    for key in flats[0]:
        vals = [f[key] for f in flats]
        if key not in INITIAL and _swept(key, vals[0]) and any(v != vals[0] for v in vals):
            out[key] = np.asarray(vals, np.float32)
    return out


def with_values(cfg, values: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with ``values`` (dotted key -> number or tracer) set, e.g. ``loss.dann``."""
    c = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)
    for key, v in values.items():
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = v
    return c


def _task_view(task, values: dict):
    """``task`` normalising with the member's traced dataset statistics, if they differ between members."""
    if "__norm_mean" not in values:
        return task
    view = copy.copy(task)
    view.normalization = {**task.normalization, "mean": values["__norm_mean"], "std": values["__norm_std"]}
    return view


def _stack(trees: Sequence):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


class VectorTrainer(Trainer):
    """The trainer's loop over K members trained as one vmapped, jitted step."""

    stacked = True

    def __init__(self, cfgs: Sequence, workdirs: Sequence[str | Path]):
        if len(plan_groups(cfgs)) != 1:
            raise NotVectorizable("the configurations differ in more than vectorizable numbers")
        enable_compilation_cache()
        self.cfgs, self.cfg = list(cfgs), cfgs[0]
        self.workdir = Path(workdirs[0]).absolute()
        self.mesh = make_mesh()
        tasks: dict[tuple, Any] = {}  # one per distinct initial state (seed, starting weights)
        self.task_of, self._locks = [], []
        try:
            for cfg, wd in zip(cfgs, workdirs):
                self._locks.append(lock.acquire(Path(wd).absolute()))
                runinfo.prepare_workdir(Path(wd).absolute(), cfg)
                key = (cfg.seed, cfg.model.init)
                if key not in tasks:
                    tasks[key] = build_task(cfg, self.mesh, Path(wd).absolute())
                self.task_of.append(list(tasks).index(key))
                record.write(Path(wd).absolute(), cfg, tasks[key])
        except BaseException:
            self.release()
            raise
        self.tasks = list(tasks.values())
        self.task = self.tasks[0]
        self.images_per_step = self.task.images_per_step
        self.members = [Member(cfg, Path(wd).absolute(), Checkpoints(
            Path(wd).absolute() / "checkpoints", keep=cfg.keep_checkpoints, best_metric=cfg.best_metric))
            for cfg, wd in zip(cfgs, workdirs)]
        from jtl.optim import make_schedule  # noqa: PLC0415

        self._schedules = [make_schedule(c) for c in cfgs]

        values = swept_values(cfgs)
        norms = [self.tasks[t].normalization for t in self.task_of]
        if any(n["mean"] != norms[0]["mean"] or n["std"] != norms[0]["std"] for n in norms):
            values["__norm_mean"] = np.asarray([n["mean"] for n in norms], np.float32)
            values["__norm_std"] = np.asarray([n["std"] for n in norms], np.float32)
        self.swept = sorted(k for k in values if not k.startswith("__"))

        k, n_dev = len(cfgs), self.mesh.devices.size
        member_axis = P("data") if k % n_dev == 0 else P()
        self._members_sh = NamedSharding(self.mesh, member_axis)
        self.shared_data = len(self.tasks) == 1
        self._batch_sh = NamedSharding(self.mesh, P() if self.shared_data else member_axis)
        self.values = jax.device_put({k_: jnp.asarray(v) for k_, v in values.items()}, self._members_sh)
        template, task = cfgs[0], self.task
        data_axis = None if self.shared_data else 0

        def member_step(vals, state, batch):
            cfg = with_values(template, {k_: v for k_, v in vals.items() if not k_.startswith("__")})
            return build_step(_task_view(task, vals), cfg)(state, batch)

        def member_eval(vals, state, batch):
            out, _ = _task_view(task, vals).forward(state.variables, batch, False)
            return {"logits": out["logits"].astype(jnp.float32),
                    "pooled": out["features"]["pooled"].astype(jnp.float32)}

        sh = (self._members_sh, self._members_sh, self._batch_sh)
        step = jax.jit(jax.vmap(member_step, in_axes=(0, 0, data_axis)), in_shardings=sh,
                       out_shardings=(self._members_sh, self._members_sh), donate_argnums=1)
        self.train_step = lambda state, batch: step(self.values, state, batch)
        evaluate = jax.jit(jax.vmap(member_eval, in_axes=(0, 0, data_axis)), in_shardings=sh,
                           out_shardings=self._members_sh)
        self.eval_step = lambda state, batch: evaluate(self.values, state, batch)

    # -- hooks of the loop -------------------------------------------------------------------
    def initial_state(self):
        """Each member's initial state (its seed's), stacked."""
        return jax.device_put(_stack([self.tasks[t].state for t in self.task_of]), self._members_sh)

    def _start(self):
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.task.state)
        found = [m.ckpt.restore_latest(abstract) for m in self.members]
        if all(f is None for f in found):
            return self.initial_state(), None
        steps = {f[2] if f is not None else None for f in found}
        if len(steps) != 1:
            raise NotVectorizable(f"the members' checkpoints are at different steps ({sorted(map(str, steps))}); "
                                  "resume them one by one")
        for t, task in enumerate(self.tasks):
            task.train_iterator.set_state(found[self.task_of.index(t)][1])
        state = jax.device_put(_stack([f[0] for f in found]), self._members_sh)
        return state, found[0][2]

    def _per_member(self, batches: list[dict]) -> dict:
        """One batch per task -> the step's batch: shared, or stacked along the member axis."""
        if self.shared_data:
            return batches[0]
        return {k: np.stack([np.asarray(batches[t][k]) for t in self.task_of]) for k in batches[0]}

    def _next_batch(self, step: int):
        batches = [task.prepare(next(task.train_iterator)) for task in self.tasks]
        for b in batches:
            check_finite_batch(b, f"the input batch of step {step} (data.train={self.cfg.data.train!r})")
        return jax.device_put(self._per_member(batches), self._batch_sh)

    def _evaluate_members(self, state, step: int | None) -> list[dict]:
        results: list[dict] = [{} for _ in self.members]
        for label in self.task.eval_iterators:
            outs = self._member_passes(state, lambda task: task.eval_iterators[label], f"eval split {label!r}")
            for i, m in enumerate(self.members):
                results[i][label] = record_eval(m, label, step, *outs[i])
        return results

    def _member_passes(self, state, iterator_of, what: str) -> list[tuple[list, list, list]]:
        """Per member, ``(logits, pooled, labels)`` batches of one ordered pass over its task's ``iterator_of(task)()``."""
        outs = [([], [], []) for _ in self.members]
        for batches in zip(*[iterator_of(task)() for task in self.tasks], strict=True):
            batches = [dict(b) for b in batches]
            masks = [np.asarray(b.pop("mask", np.ones(len(b["label"]), bool))) for b in batches]
            for b in batches:
                check_finite_batch(b["image"], f"an input batch of {what}")
            out = jax.device_get(self.eval_step(state, jax.device_put(self._per_member(batches), self._batch_sh)))
            for i, t in enumerate(self.task_of):
                outs[i][0].append(np.asarray(out["logits"][i])[masks[t]])
                outs[i][1].append(np.asarray(out["pooled"][i])[masks[t]])
                outs[i][2].append(np.asarray(batches[t]["label"])[masks[t]])
        return outs

    def _member_state(self, state, i: int):
        return jax.tree.map(lambda x: x[i], state)

    def _task(self, i: int):
        return self.tasks[self.task_of[i]]

    def _data_state(self, i: int) -> dict:
        return self.tasks[self.task_of[i]].train_iterator.get_state()

    def _lr(self, i: int, step: int) -> float:
        return float(self._schedules[i](step))

    def _fail(self, member: Member, error: JtlError) -> None:
        """Record the member's failure in its workdir; the other members train on."""
        member.failed = str(error)
        runinfo.record_failure(member.workdir, error)
        if all(m.failed is not None for m in self.members):
            raise JtlError(f"every member of the vectorized group failed; first: {self.members[0].failed}")
