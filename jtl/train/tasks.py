"""What the trainer trains: model, data, initial state and forward pass, built from a config.

A task provides ``state`` (initial :class:`TrainState`), ``tx``, ``forward``,
``train_iterator``, ``eval_iterators`` ({label: () -> iterator}), ``prepare``
(host batch -> model batch), ``lr`` (step -> learning rate), ``head_regex``
and ``images_per_step``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jtl import data as jdata
from jtl.data.classes import RunClasses
from jtl.data.splits import run_fractions
from jtl.config import parse_eval  # noqa: F401 - part of this module's interface
from jtl.errors import ConfigError
from jtl.models import family_of
from jtl.models.transfer import TransferModel, initial_variables, to_transfer_layout
from jtl.optim import frozen_modules, make_optimizer, make_schedule
from jtl.progress import phase, say
from jtl.train.pieces import get_piece
from jtl.train.forward import classification_forward, normalize_on_device, train_rngs  # noqa: F401 - re-exported
from jtl.train.state import initial_state
from jtl.train.steps import make_train_step


def load_source(cfg, name: str, split: str, *, budget: bool, classes: RunClasses | None = None):
    """A split of dataset ``name``: the training set (``data.classes`` and, with ``budget``,
    ``data.limit`` applied), or, given the run's ``classes``, any other set relabelled onto
    them by class name (:mod:`jtl.data.classes`)."""
    opts = {"seed": cfg.seed, "on_error": cfg.data.on_error, **run_fractions(cfg, name)}
    if classes is not None:
        with phase(f"loading {name}:{split}"):
            return classes.align(jdata.load(name, split, **opts))
    if cfg.data.classes:
        opts["classes"] = tuple(cfg.data.classes)
    if budget and cfg.data.limit:
        opts["limit"] = cfg.data.limit
    with phase(f"loading {name}:{split}"):
        return jdata.load(name, split, **opts)


def run_classes(cfg, train_source) -> RunClasses:
    """The run's classes: the training set's names; ``excluded``: those ``data.classes`` left out."""
    names = tuple(train_source.info.class_names)
    excluded = ()
    if cfg.data.classes:
        every = jdata.info(cfg.data.train, on_error=cfg.data.on_error).class_names
        excluded = tuple(n for n in every if n not in names)
    return RunClasses(names, excluded)


def check_num_classes(cfg, src) -> None:
    """Labels beyond the head's outputs would train on garbage (an out-of-range cross-entropy)."""
    k = max(src.info.num_classes, int(src.labels.max()) + 1 if len(src.labels) else 0)
    if k > cfg.model.num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but {src.name}:{src.split} has {k} classes; "
                          f"set model.num_classes={k}, or keep fewer classes with data.classes")


def check_batch_fits(cfg, src) -> None:
    """Every step draws ``batch_size`` distinct examples: the training set must hold that many."""
    if len(src) < cfg.batch_size:
        raise ConfigError(f"data.train {src.name}:{src.split} has {len(src)} examples, fewer than "
                          f"batch_size={cfg.batch_size}; set --config.batch_size to {len(src)} or fewer")


NEW_PARAMS = r"^(?!backbone/)"  # the parameters new to a transferred model: all but the backbone
NEW_PARTS = r"^(params|batch_stats)/(?!backbone/)"  # their variables: may differ from model.init's


def pretrained_variables(cfg) -> dict:
    """``{"params", "batch_stats"}`` named by ``model.init``, in the transfer layout
    (:mod:`jtl.models.transfer`): another run's workdir (its latest checkpoint: the end of
    that run), or weights (registry name, `jtl port` dir, .pth/.safetensors); the backbone
    resized to ``data.image_size`` where its family needs that (ViT position embeddings)."""
    from jtl.train.checkpoint import restore_variables  # noqa: PLC0415 - orbax only when a run seeds this one
    from jtl.weights import load_weights  # noqa: PLC0415 - torch-format readers only when weights are named

    src = cfg.model.init
    if os.path.isdir(src) and (Path(src) / "checkpoints").is_dir():
        pre = restore_variables(src, which="latest")
    else:
        _, pre = load_weights(src, cfg.model.name)
        pre = to_transfer_layout(pre, cfg.model.name)
    pre = {"params": dict(pre["params"]), "batch_stats": dict(pre["batch_stats"] or {})}
    family = family_of(cfg.model.name)
    if family.resize is not None:
        backbone = family.resize({"params": pre["params"]["backbone"],
                                  "batch_stats": pre["batch_stats"].get("backbone", {})},
                                 cfg.model.name, cfg.data.image_size)
        pre["params"]["backbone"] = backbone["params"]
        if backbone["batch_stats"]:
            pre["batch_stats"]["backbone"] = backbone["batch_stats"]
    return pre


def transfer_model(cfg, *, bottleneck_dim: int = 0, heads=(), frozen=()) -> TransferModel:
    """The run's :class:`TransferModel` (``compute_dtype`` arithmetic, float32 parameters)."""
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    return TransferModel(cfg.model.name, cfg.model.num_classes, bottleneck_dim, tuple(heads), cfg.adapt.disc_hidden,
                         dtype, tuple(frozen), cfg.data.image_size)


def start_variables(cfg, model: TransferModel, sample: np.ndarray, *, as_family: bool):
    """Random init (drawn as :func:`jtl.models.transfer.initial_variables` says), then, with
    ``model.init``, every variable of the same path and shape taken from it; the parts outside
    the backbone that differ (another head size, a bottleneck or heads the run lacks) start
    fresh or are dropped, as the report printed says.

    Returns ``(variables, old_head)``: ``old_head`` is the starting weights' classifier
    ({"kernel", "bias"}) if they have one (for LwF), else None.
    """
    variables = initial_variables(model, jax.random.key(cfg.seed), sample, as_family=as_family)
    if not cfg.model.init:
        return variables, None
    from jtl.weights import merge_pretrained  # noqa: PLC0415 - torch-format readers only when weights are named

    with phase(f"loading model.init {cfg.model.init}"):
        pretrained = pretrained_variables(cfg)
    merged, report = merge_pretrained(variables, pretrained, reinit=NEW_PARTS)
    merged.setdefault("batch_stats", {})  # a family without BatchNorm has none
    say(f"model.init {cfg.model.init}: {report.summary()}")
    return merged, pretrained["params"].get("head")


def check_divisible(cfg, mesh) -> None:
    """The global batches must split evenly over the devices."""
    n_dev = mesh.devices.size
    for key in ("batch_size", "eval_batch_size"):
        if cfg[key] % n_dev:
            raise ConfigError(f"{key}={cfg[key]} is not divisible by the {n_dev} devices; make it a multiple of {n_dev}")


def train_iterator(cfg, source, normalize):
    """This process's shard of shuffled, repeated, augmented uint8 batches of ``source``.

    Batches leave the host as uint8 and are normalised inside the jitted step
    (:func:`normalize_on_device`; scripts/bench_input.py: faster than on the host).
    """
    pc, pi = jax.process_count(), jax.process_index()
    return jdata.make_iterator(
        source, batch_size=cfg.batch_size // pc, seed=cfg.seed, train=True, augment=tuple(cfg.data.augment),
        normalize=normalize, process_index=pi, process_count=pc, output="uint8",
        channels=cfg.data.channels, **jdata.geometry(cfg.data))


def eval_iterators(cfg, stats, classes: RunClasses) -> dict:
    """``{label: () -> iterator}`` over each ``data.eval`` split (relabelled onto the run's
    ``classes`` by name), normalised with the training ``stats``."""
    pc, pi = jax.process_count(), jax.process_index()
    out = {}
    for label, (name, split) in parse_eval(cfg.data.eval).items():
        esrc = load_source(cfg, name, split, budget=False, classes=classes)
        out[label] = (lambda esrc=esrc: jdata.make_iterator(
            esrc, batch_size=cfg.eval_batch_size // pc, seed=cfg.seed, train=False, normalize=stats,
            process_index=pi, process_count=pc, output="uint8", channels=cfg.data.channels,
            **jdata.geometry(cfg.data)))
    return out


def normalization_of(cfg, it) -> dict:
    return {"mean": list(it.mean), "std": list(it.std), **jdata.geometry(cfg.data), "channels": cfg.data.channels}


class ClassificationTask:
    """Supervised training of ``model.name`` on ``data.train`` (fine-tuning, scratch, probes)."""

    def __init__(self, cfg, mesh):
        self.cfg = cfg
        check_divisible(cfg, mesh)
        self.head_regex = NEW_PARAMS
        src = load_source(cfg, cfg.data.train, cfg.data.train_split, budget=True)
        check_num_classes(cfg, src)
        check_batch_fits(cfg, src)
        self.classes = run_classes(cfg, src)
        with phase("normalisation statistics" if cfg.data.normalize == "dataset" else "input pipeline"):
            self.train_iterator = train_iterator(cfg, src, None if cfg.data.normalize == "none" else cfg.data.normalize)
        self.normalization = normalization_of(cfg, self.train_iterator)
        self.eval_iterators = eval_iterators(cfg, (self.train_iterator.mean, self.train_iterator.std), self.classes)
        self.images_per_step = cfg.batch_size
        sample_x = np.zeros((1, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), np.float32)

        shapes = jax.eval_shape(transfer_model(cfg).init, jax.random.key(0), jnp.asarray(sample_x))
        frozen = frozen_modules(shapes["params"]["backbone"], cfg.freeze, prefix="backbone/")
        self.model = transfer_model(cfg, frozen=frozen)
        variables, old_head = start_variables(cfg, self.model, sample_x, as_family=True)
        self.lr = make_schedule(cfg)
        needs_anchor = any(get_piece(name).needs_anchor for name in cfg.loss)
        anchor = None
        if needs_anchor:
            anchor = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
            if old_head is not None:
                anchor["old_head"] = old_head
        opt_state = self.optimizer(cfg, variables["params"]).init(variables["params"])
        self.state = initial_state(variables["params"], variables["batch_stats"], opt_state, cfg.seed, mesh, anchor)

    @staticmethod
    def optimizer(cfg, params):
        """The run's optimizer (built for the initial state, and again, from a config that may hold a
        vectorized sweep's traced numbers, for the step)."""
        return make_optimizer(cfg, params)

    def forward(self, variables, batch, train: bool, rng=None):
        return classification_forward(self.model, self.normalization)(variables, batch, train, rng)

    def make_step(self, loss_fn, cfg):
        return make_train_step(loss_fn, self.optimizer(cfg, self.state.params), accum=cfg.grad_accum_steps)

    @staticmethod
    def prepare(batch: dict) -> dict:
        return {"image": batch["image"], "label": batch["label"]}
