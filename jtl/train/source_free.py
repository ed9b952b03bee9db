"""Source-free domain adaptation: a source run's model adapted to unlabelled target data alone.

What is assumed available: the source run's directory (``model.init``: its latest checkpoint,
its class names and input normalisation from ``run.json``) and the unlabelled target set
``adapt.target:adapt.target_split``. No source data is opened: ``data.train`` is not read,
and the loss may hold only pieces that declare ``needs_source=False``. The model is the
source run's model, every variable taken from it (a shape that differs is an error, never a
fresh start); ``freeze`` keeps parts of it fixed (SHOT and NRC keep the classifier ``head``,
the source hypothesis). Each step is one forward pass over a target batch; pieces see
``logits_t``, ``f_t``, the views they declare and the batch's sample ids ``batch["index"]``,
and the memory banks they declare live in the train state (:mod:`jtl.train.bank`).

SHOT (Liang et al. 2020) and NRC (Yang et al. 2021): :data:`jtl.methods.SOURCE_FREE`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from jtl import data as jdata
from jtl.data.classes import RunClasses
from jtl.errors import ConfigError
from jtl.models.backbones import num_features
from jtl.optim import make_optimizer, make_schedule
from jtl.progress import phase, say
from jtl.train import record
from jtl.train.adapt import adaptation_forward, build_model
from jtl.train.adapt_pieces import VIEWS  # noqa: F401 - registers the pieces (the source-free ones among them)
from jtl.train.bank import initial_banks
from jtl.train.pieces import declared_views, get_piece
from jtl.train.state import initial_state
from jtl.train.steps import make_train_step
from jtl.train.tasks import NEW_PARAMS, check_divisible, eval_iterators, pretrained_variables


def source_run(cfg) -> dict:
    """The facts (``run.json``) of the source run named by ``model.init``, checked against ``cfg``."""
    src = cfg.model.init
    if not src or not (Path(src) / "checkpoints").is_dir():
        raise ConfigError(f"a source-free run (adapt.source_free) starts from a source run's directory: set "
                          f"model.init to one (a directory with checkpoints/), got {src!r}")
    facts = record.read(src)
    norm = facts["normalization"]
    want = {**jdata.geometry(norm), "channels": norm["channels"]}  # the source run's input geometry
    if want != {**jdata.geometry(cfg.data), "channels": cfg.data.channels}:
        raise ConfigError(f"model.init {src} was trained at " + ", ".join(f"{k}={v}" for k, v in want.items())
                          + "; set data." + ", data.".join(want) + " to those")
    return facts


def source_variables(cfg, model, sample: np.ndarray) -> dict:
    """Every variable of ``model`` taken from the source run (extra ones there, e.g. a domain
    discriminator, are dropped); a variable it lacks, or of another shape, is an error."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), sample)
    with phase(f"loading model.init {cfg.model.init}"):
        pre = pretrained_variables(cfg)
    out = {}
    for col in ("params", "batch_stats"):
        want = traverse_util.flatten_dict(dict(shapes.get(col, {})), sep="/")
        have = traverse_util.flatten_dict(dict(pre.get(col, {})), sep="/")
        for path, s in want.items():
            if path not in have or tuple(np.shape(have[path])) != tuple(s.shape):
                got = "missing" if path not in have else f"shape {tuple(np.shape(have[path]))}"
                raise ConfigError(f"model.init {cfg.model.init} has no {col}/{path} of shape {tuple(s.shape)} "
                                  f"({got}); a source-free run keeps the source model: set model.name, "
                                  "model.num_classes and adapt.bottleneck_dim as the source run had them")
        out[col] = traverse_util.unflatten_dict({p: np.asarray(have[p]) for p in want}, sep="/")
    say(f"model.init {cfg.model.init}: every variable of the source model loaded")
    return out


class SourceFreeTask:
    """Unlabelled target training of the source run's model (``adapt.source_free``)."""

    def __init__(self, cfg, mesh):
        self.cfg, a = cfg, cfg.adapt
        check_divisible(cfg, mesh)
        if not a.target:
            raise ConfigError("adapt.source_free needs adapt.target, the unlabelled target dataset")
        if cfg.grad_accum_steps != 1:
            raise ConfigError("grad_accum_steps > 1 is not supported with source-free adaptation")
        names = list(cfg.loss)
        needs = [n for n in names if get_piece(n).needs_source]
        if needs:
            raise ConfigError(f"loss pieces {needs} read labelled source data, which a source-free run "
                              "(adapt.source_free) does not have; use target-only pieces")
        facts = source_run(cfg)
        self.classes = RunClasses.from_json(facts)
        self.normalization = dict(facts["normalization"])
        stats = (tuple(self.normalization["mean"]), tuple(self.normalization["std"]))  # the source model's inputs
        with phase(f"loading {a.target}:{a.target_split}"):
            tgt = self.classes.align(jdata.load(a.target, a.target_split, seed=cfg.seed, on_error=cfg.data.on_error))
        if len(tgt) < cfg.batch_size:
            raise ConfigError(f"adapt.target {a.target}:{a.target_split} has {len(tgt)} examples, fewer than "
                              f"batch_size={cfg.batch_size}; lower batch_size")
        pc, pi = jax.process_count(), jax.process_index()
        common = dict(seed=cfg.seed, normalize=stats, process_index=pi, process_count=pc, output="uint8",
                      channels=cfg.data.channels, with_index=True, **jdata.geometry(cfg.data))
        self.train_iterator = jdata.make_iterator(tgt, batch_size=cfg.batch_size // pc, train=True,
                                                  augment=tuple(cfg.data.augment), **common)
        self.bank_size = len(tgt)
        self.bank_pass = lambda: jdata.make_iterator(tgt, batch_size=cfg.eval_batch_size // pc, train=False, **common)
        self.eval_iterators = eval_iterators(cfg, stats, self.classes)
        self.images_per_step = cfg.batch_size
        self.head_regex = NEW_PARAMS
        self.views = declared_views(names)

        self.model = build_model(cfg)
        x0 = np.zeros((1, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), np.float32)
        variables = source_variables(cfg, self.model, x0)
        params = variables["params"]
        self.lr = make_schedule(cfg)
        bank = initial_banks(cfg, self.bank_size, a.bottleneck_dim or num_features(cfg.model.name),
                             len(self.classes.names))
        self.state = initial_state(params, variables.get("batch_stats", {}), make_optimizer(cfg, params).init(params),
                                   cfg.seed, mesh, bank=bank)

    def forward(self, variables, batch, train: bool, rng=None):
        """The adaptation model's pass over the target batch alone (an empty source part)."""
        forward = adaptation_forward(self.model, self.normalization, self.views)
        if "image_t" in batch:
            batch = {**batch, "image_s": batch["image_t"][:0]}
        return forward(variables, batch, train, rng)

    def make_step(self, loss_fn, cfg):
        return make_train_step(loss_fn, make_optimizer(cfg, self.state.params))

    @staticmethod
    def prepare(batch: dict) -> dict:
        return {"image_t": batch["image"], "index": batch["index"]}
