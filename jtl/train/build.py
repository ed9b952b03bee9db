"""The task interface and :func:`build_task`, the one place that knows every task.

A task is what the loop trains: data, model, initial state and forward pass, built
from a config. The loop, vectorized sweeps and the benchmarks use only this interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from jtl.data.classes import RunClasses
from jtl.train.adapt import AdaptationTask
from jtl.train.probe import LinearProbeTask
from jtl.train.state import TrainState
from jtl.train.tasks import ClassificationTask


class Task(Protocol):
    """What the trainer needs from a recipe."""

    classes: RunClasses  # the run's class names (label order); recorded in run.json
    normalization: dict  # {"mean", "std", "image_size", "channels"}; recorded in run.json
    state: TrainState  # the initial state, replicated over the mesh
    train_iterator: Iterator[dict]  # resumable: get_state() / set_state()
    eval_iterators: dict[str, Callable[[], Iterator[dict]]]  # label -> () -> one ordered pass
    head_regex: str  # parameters of the new head(s) (what regularizers treat as "new")
    images_per_step: int
    lr: Callable[[int], Any]  # step -> learning rate

    def forward(self, variables: dict, batch: dict, train: bool, rng=None) -> tuple[dict, Any]:
        """``({"logits", "features": {"pooled", ...}, ...}, new batch_stats)``."""

    def prepare(self, batch: dict) -> dict:
        """A host batch of the train iterator -> the step's batch."""

    def make_step(self, loss_fn, cfg) -> Callable:
        """``step(state, batch) -> (state, metrics)`` (not jitted) for ``cfg`` (numbers may be traced)."""


def build_task(cfg, mesh, workdir: str | Path) -> Task:
    """The task of ``cfg``: domain generalization (``dg.domains`` set), adaptation (``adapt.target`` set),
    a linear probe, or supervised training."""
    if cfg.dg.domains:  # domain generalization: several labelled source domains
        from jtl.dg.task import DGTask  # noqa: PLC0415 - registers the DG loss pieces when first used

        return DGTask(cfg, mesh)
    if cfg.adapt.source_free:  # a source run's model + unlabelled target data only
        from jtl.train.source_free import SourceFreeTask  # noqa: PLC0415

        return SourceFreeTask(cfg, mesh)
    if cfg.adapt.target:
        return AdaptationTask(cfg, mesh)
    if cfg.recipe == "linear_probe":
        return LinearProbeTask(cfg, mesh, Path(workdir))
    return ClassificationTask(cfg, mesh)
