"""A trained run as a function, from its directory alone: model + forward + restore.

``RunModel(workdir, checkpoint)`` reads ``config.json``, ``run.json`` (classes,
normalisation, input size, a probe's ``backbone.npz``) and one checkpoint's
``params``/``batch_stats``. It never opens the training data, the ``model.init``
weights or anything writable: a read-only run directory whose training data is gone
evaluates and predicts as before. ``jtl eval`` and ``jtl predict`` are built on it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jtl import data as jdata
from jtl.config import resolve
from jtl.data.classes import RunClasses
from jtl.distributed import global_rows
from jtl.errors import JtlError
from jtl.progress import say
from jtl.train import record
from jtl.train.checkpoint import restore_variables
from jtl.train.metrics import classification_metrics
from jtl.train.runinfo import read_config_json
from jtl.train.adapt import adaptation_forward, build_model as build_adaptation_model
from jtl.train.state import TrainState
from jtl.train.steps import make_eval_step, make_mesh, shard_batch
from jtl.train.layout import current_layout
from jtl.train.probe import only_backbone
from jtl.train.tasks import classification_forward, transfer_model


def _model_of(cfg, facts: dict):
    """The run's model, as the trainer built it (a probe's: the classifier on its stored backbone)."""
    if facts["recipe"] == "adapt":
        return build_adaptation_model(cfg)
    return transfer_model(cfg)


class RunModel:
    """The model of run ``workdir`` at checkpoint ``"latest"`` or ``"best"`` (strict: a run
    without a best checkpoint is a one-line error, never silently the latest)."""

    def __init__(self, workdir, checkpoint: str = "latest"):
        self.workdir = Path(workdir).absolute()
        if not (self.workdir / "config.json").exists():
            raise JtlError(f"{workdir} is not a jtl run directory (no config.json)")
        self.cfg = resolve(read_config_json(self.workdir / "config.json"), recorded=True)
        if not (self.workdir / "checkpoints").is_dir():
            raise JtlError(f"{workdir} has no checkpoint yet; train first")
        if (self.workdir / record.RUN_FILE).exists():
            self.facts = record.read(self.workdir)
        else:  # a run from before run.json: its classes and statistics come from its training data
            say(f"{workdir} has no {record.RUN_FILE} (an older run): reading its training data for its "
                "class names and normalisation")
            self.facts = record.reconstruct(self.cfg)
        self.classes = RunClasses.from_json(self.facts)
        self.normalization = self.facts["normalization"]
        restored = restore_variables(self.workdir, checkpoint, strict=True)
        self.step = int(restored.pop("step"))
        self.variables = {"params": restored["params"], "batch_stats": restored["batch_stats"] or {}}
        if self.facts["recipe"] == "linear_probe":  # the trained classifier on the stored frozen backbone
            backbone = only_backbone(current_layout(record.load_backbone(self.workdir), self.cfg.model.name))
            self.variables = {"params": {**backbone["params"], "head": self.variables["params"]["head"]},
                              "batch_stats": backbone["batch_stats"]}
        # The trainer's own forward pass (a probe's trainer runs it once, to extract its features).
        self.forward = (adaptation_forward if self.facts["recipe"] == "adapt" else classification_forward)(
            _model_of(self.cfg, self.facts), self.normalization)
        self._apply = jax.jit(lambda v, x: self.forward(v, {"image": x}, False)[0])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits of a batch of images: uint8 (N, H, W, C) at the run's input size and channels."""
        return np.asarray(self._apply(self.variables, jnp.asarray(images))["logits"])

    def evaluate(self, source, *, batch_size: int | None = None) -> dict:
        """Classification metrics on ``source`` (a :class:`jtl.data.Source`), relabelled onto the
        run's classes by name first; data-parallel over every device of every process."""
        source = self.classes.align(source)
        norm, cfg = self.normalization, self.cfg
        mesh = make_mesh()
        batch_size = batch_size or cfg.eval_batch_size
        if batch_size % mesh.devices.size:
            batch_size = mesh.devices.size * max(1, batch_size // mesh.devices.size)
        it = jdata.make_iterator(source, batch_size=batch_size // jax.process_count(), seed=cfg.seed, train=False,
                                 normalize=(norm["mean"], norm["std"]), **jdata.geometry(norm),
                                 channels=norm["channels"], process_index=jax.process_index(),
                                 process_count=jax.process_count(), output="uint8")
        step = make_eval_step(self.forward, mesh)
        state = TrainState(jnp.zeros((), jnp.int32), self.variables["params"], self.variables["batch_stats"], (),
                           jnp.zeros((2,), jnp.uint32))
        state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        logits, labels = [], []
        for batch in it:
            mask = np.asarray(batch.pop("mask"))
            out, mask, batch = global_rows(step(state, shard_batch(mesh, batch)), mask, batch)
            logits.append(np.asarray(out["logits"])[mask])
            labels.append(np.asarray(batch["label"])[mask])
        return classification_metrics(np.concatenate(logits), np.concatenate(labels))
