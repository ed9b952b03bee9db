"""The domain-generalization task: train on the source domains, evaluate every domain.

``dg.domains`` lists every domain of the benchmark (dataset names) and ``dg.test`` the
indices of the held-out ones; the run trains on the others with balanced batches
(``batch_size / D`` per source domain, :mod:`jtl.dg.batching`) and evaluates, at every
``eval_every``, each domain's ``val`` split (``val_<name>``, as ``dg.val_split`` says: carved with
``data.val_fraction`` by default, :mod:`jtl.dg.validation`)
and each held-out domain's ``test`` split (``test_<name>``): what DomainBed's training-domain
validation, leave-one-domain-out and oracle selections read (:mod:`jtl.dg.selection`).

The train state's ``opt_state`` is ``{"optimizer": ..., "groupdro_q": q, "swad": ...}``: the
optimizer's state, Group DRO's domain weights and SWAD's running sums, whichever the run uses.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtl import data as jdata
from jtl.data.classes import RunClasses
from jtl.dg import pieces as _pieces  # noqa: F401 - registers the DG loss pieces
from jtl.dg import frozen_bn, swad, validation
from jtl.data.splits import stratified_subset
from jtl.dg.batching import DomainBatches, disjoint_positions
from jtl.dg.model import build_model
from jtl.errors import ConfigError
from jtl.optim import make_optimizer, make_schedule
from jtl.progress import phase
from jtl.train.state import TrainState, initial_state
from jtl.train.tasks import NEW_PARAMS, check_divisible, check_num_classes, classification_forward, start_variables

ANNEALED = ("irm", "vrex")  # pieces whose weight jumps at loss_options.<piece>.anneal_steps


def domain_names(cfg) -> tuple[str, ...]:
    """Display names of ``dg.domains`` (``dg.names``, default ``d0``, ``d1``, ...)."""
    return tuple(cfg.dg.names) or tuple(f"d{i}" for i in range(len(cfg.dg.domains)))


def check_dg(cfg) -> tuple[int, ...]:
    """The source domains' indices, after checking ``dg.*`` (one-line errors)."""
    d = cfg.dg
    n = len(d.domains)
    if n < 2:
        raise ConfigError(f"dg.domains needs at least two domains, got {n}")
    if d.names and len(d.names) != n:
        raise ConfigError(f"dg.names has {len(d.names)} names for {n} dg.domains")
    if len(set(domain_names(cfg))) != n:
        raise ConfigError(f"dg.names must be distinct, got {domain_names(cfg)}")
    bad = [t for t in d.test if not (isinstance(t, int) and 0 <= t < n)]
    if bad or len(set(d.test)) != len(d.test):
        raise ConfigError(f"dg.test must hold distinct domain indices in 0..{n - 1}, got {tuple(d.test)}")
    train = tuple(i for i in range(n) if i not in d.test)
    if not train:
        raise ConfigError("dg.test holds out every domain: nothing is left to train on")
    if cfg.batch_size % len(train):
        raise ConfigError(f"batch_size={cfg.batch_size} must be a multiple of the {len(train)} source domains "
                          "(each step takes batch_size / D examples of each)")
    validation.check(cfg)
    frozen_bn.check(cfg)
    if cfg.adapt.target or cfg.recipe != "train":
        raise ConfigError("dg.domains cannot be combined with adapt.target or a linear probe")
    if d.swad:
        swad.check_config(cfg)
    return train


@functools.lru_cache(maxsize=64)
def load_split(name: str, split: str, seed: int, val_fraction: float, on_error: str):
    """One split of one domain, kept for the process: a sweep's runs (and a vectorized group's
    seeds) read the same domains again and again."""
    with phase(f"loading {name}:{split}"):
        return jdata.load(name, split, seed=seed, val_fraction=val_fraction, on_error=on_error)


def domain_source(cfg, i: int, split: str):
    """Domain ``i``'s ``split`` (train, val, test) as ``dg.val_split`` defines it (:mod:`jtl.dg.validation`)."""
    load = lambda name, part, fraction: load_split(name, part, cfg.seed, fraction, cfg.data.on_error)  # noqa: E731
    return validation.domain_split(cfg, load, cfg.dg.domains[i], split)


def eval_splits(cfg) -> dict[str, tuple[int, str]]:
    """``{label: (domain index, split)}`` of what a run evaluates: every domain's ``val_<name>``,
    each held-out domain's ``test_<name>`` after it (``jtl eval --split LABEL`` reads the same)."""
    out = {}
    for i, name in enumerate(domain_names(cfg)):
        out[f"val_{name}"] = (i, "val")
        if i in cfg.dg.test:
            out[f"test_{name}"] = (i, "test")
    return out


def eval_source(cfg, i: int, split: str):
    """Domain ``i``'s eval split as the run evaluates it: a ``test`` split cut to ``dg.test_limit``
    images (a seeded stratified subset)."""
    src = domain_source(cfg, i, split)
    if split == "test" and cfg.dg.test_limit and cfg.dg.test_limit < len(src):
        src = src.subset(stratified_subset(src.labels, cfg.dg.test_limit, cfg.seed, src.name))
    return src


class DGTask:
    """Training on several source domains with balanced batches (see the module docstring)."""

    def __init__(self, cfg, mesh):
        self.cfg = cfg
        check_divisible(cfg, mesh)
        self.train_ids = check_dg(cfg)
        self.names = domain_names(cfg)
        self.num_domains = len(self.train_ids)
        self.head_regex = NEW_PARAMS
        sources = [self._train_source(i) for i in self.train_ids]
        check_num_classes(cfg, sources[0])
        self.classes = RunClasses(tuple(sources[0].info.class_names), ())
        per_domain = cfg.batch_size // self.num_domains
        for s in sources:
            if len(s) < per_domain:
                raise ConfigError(f"source domain {s.name} has {len(s)} training examples, fewer than "
                                  f"batch_size / D = {per_domain}")
        normalize = None if cfg.data.normalize == "none" else cfg.data.normalize
        with phase("normalisation statistics" if cfg.data.normalize == "dataset" else "input pipeline"):
            first = self._iterator(sources[0], per_domain, normalize, train=True)
        stats = (first.mean, first.std)  # every domain is normalised like the first source domain
        self.train_iterator = DomainBatches([first] + [self._iterator(s, per_domain, stats, train=True)
                                                       for s in sources[1:]])
        self.normalization = {"mean": list(first.mean), "std": list(first.std), **jdata.geometry(cfg.data),
                              "channels": cfg.data.channels}
        self.eval_iterators = self._eval_iterators(stats)
        self.images_per_step = cfg.batch_size

        self.model = build_model(cfg)
        x0 = np.zeros((1, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), np.float32)
        variables, _ = start_variables(cfg, self.model, x0, as_family=True)
        self.lr = make_schedule(cfg)
        params = variables["params"]
        tx = make_optimizer(frozen_bn.optimizer_config(cfg, variables["batch_stats"]), params)
        extra = {"optimizer": tx.init(params)}
        if "groupdro" in cfg.loss:
            extra["groupdro_q"] = np.full((self.num_domains,), 1.0 / self.num_domains, np.float32)
        if cfg.dg.swad:
            extra["swad"] = swad.empty_sums(params, swad.num_segments(cfg))
        self.state = initial_state(params, variables["batch_stats"], extra, cfg.seed, mesh)

    # -- data ----------------------------------------------------------------------------------
    def _load(self, i: int, split: str):
        return domain_source(self.cfg, i, split)

    def _train_source(self, i: int):
        """Domain ``i``'s training examples: its share of the base images (``dg.disjoint``), then
        ``data.limit`` of them (a seeded stratified subset per domain)."""
        cfg = self.cfg
        src = self._load(i, "train")
        if cfg.dg.disjoint:
            src = src.subset(disjoint_positions(src.index, i, len(cfg.dg.domains)))
        if cfg.data.limit and cfg.data.limit < len(src):
            src = src.subset(stratified_subset(src.labels, cfg.data.limit, cfg.seed, src.name))
        return src

    def _iterator(self, source, batch_size: int, normalize, *, train: bool):
        cfg = self.cfg
        return jdata.make_iterator(
            source, batch_size=batch_size, seed=cfg.seed, train=train, augment=tuple(cfg.data.augment) if train else (),
            normalize=normalize, output="uint8", channels=cfg.data.channels, **jdata.geometry(cfg.data))

    def _eval_iterators(self, stats) -> dict:
        out = {}
        for label, (i, split) in eval_splits(self.cfg).items():
            src = eval_source(self.cfg, i, split)
            out[label] = lambda src=src: self._iterator(src, self.cfg.eval_batch_size, stats, train=False)
        return out

    @staticmethod
    def prepare(batch: dict) -> dict:
        return {"image": batch["image"], "label": batch["label"]}

    # -- model and step ------------------------------------------------------------------------
    def forward(self, variables, batch, train: bool, rng=None):
        """The classifier's forward pass; in training also ``logits_d`` / ``features_d``: the
        outputs split by source domain, (D, b, ...)."""
        out, stats = classification_forward(self.model, self.normalization)(variables, batch, train, rng)
        if train:
            d = self.num_domains
            out["logits_d"] = out["logits"].reshape(d, -1, out["logits"].shape[-1])
            pooled = out["features"]["pooled"]
            out["features_d"] = pooled.reshape(d, -1, pooled.shape[-1])
        return out, stats

    def anneal_step(self, cfg) -> int | None:
        """The update at which an annealed penalty switches on (and DomainBed resets the optimizer)."""
        steps = {int(cfg.loss_options.to_dict().get(p, {}).get("anneal_steps", 500)) for p in ANNEALED if p in cfg.loss}
        if len(steps) > 1:
            raise ConfigError(f"irm and vrex anneal at different steps {sorted(steps)}; use one anneal_steps")
        return steps.pop() if steps else None

    def make_step(self, loss_fn, cfg):
        """One update; the optimizer's state is reset at the anneal step (``dg.reset_optimizer``, as
        DomainBed resets Adam when the IRM / V-REx penalty weight jumps), Group DRO's ``q`` is
        carried in the state, SWAD's sums are accumulated."""
        tx = make_optimizer(frozen_bn.optimizer_config(cfg, self.state.batch_stats), self.state.params)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        anneal = self.anneal_step(cfg) if cfg.dg.reset_optimizer else None
        eval_every = cfg.eval_every or cfg.total_steps

        def step(state: TrainState, batch):
            key = jax.random.wrap_key_data(state.rng)
            key, sub = jax.random.split(key)
            extra = dict(state.opt_state)
            batch = {**batch, "dg_step": state.step}
            if "groupdro_q" in extra:
                batch["groupdro_q"] = extra["groupdro_q"]
            (loss, (stats, metrics)), grads = grad_fn(state.params, state, batch, sub)
            opt = extra["optimizer"]
            if anneal is not None:
                fresh = tx.init(state.params)
                opt = jax.tree.map(lambda a, b: jnp.where(state.step == anneal, a, b), fresh, opt)
            updates, extra["optimizer"] = tx.update(grads, opt, state.params)
            params = optax.apply_updates(state.params, updates)
            if "groupdro_q" in extra:
                extra["groupdro_q"] = metrics.pop("groupdro/q")
                metrics["groupdro/q_max"] = jnp.max(extra["groupdro_q"])
            if "swad" in extra:
                extra["swad"] = swad.accumulate(extra["swad"], params, state.step // eval_every)
            metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
            new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=extra,
                                rng=jax.random.key_data(key))
            return new, metrics

        return step

    def finish(self, workdir, state, summary: dict) -> dict:
        """After training (called by the loop with the final state): SWAD's averaged model and its
        evaluation, when ``dg.swad`` (:mod:`jtl.dg.swad`)."""
        return swad.finish(self, workdir, state, summary)
