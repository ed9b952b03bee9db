"""Linear probe: extract pooled features once, cache them, train a linear classifier on them.

``recipe = "linear_probe"``: the backbone named by ``model.init`` (a run's
workdir, a `jtl port` directory or registry weights) runs once in eval mode
over the training and evaluation splits; the pooled features are cached in
``WORKDIR/features/<split>.npz`` (re-used on re-runs), and the same trainer then
fits ``logits = f W + b`` with the configured optimizer and loss.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jtl import data as jdata
from jtl.errors import ConfigError, DataError
from jtl.models import Dense
from jtl.optim import make_optimizer, make_schedule
from jtl.progress import phase
from jtl.train.state import initial_state
from jtl.train.steps import make_eval_step, make_train_step, shard_batch
from jtl.train.tasks import ClassificationTask, load_source


class _Arrays:
    """A random-access source over cached feature arrays."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels = features, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.features[i], "label": self.labels[i]}


class _ArrayIterator:
    """Shuffled, repeated batches of an in-memory array source, resumable (grain state)."""

    def __init__(self, source: _Arrays, batch_size: int, seed: int, train: bool):
        ds = grain.MapDataset.source(source)
        if train:
            ds = ds.shuffle(seed=seed).repeat(None).batch(batch_size, drop_remainder=True)
        else:
            n = len(source)
            padded = grain.MapDataset.range(-(-n // batch_size) * batch_size)
            ds = padded.map(lambda i: {**source[min(i, n - 1)], "mask": i < n}).batch(batch_size)
        self._it = iter(ds.to_iter_dataset())

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def get_state(self):
        return {k: int(v) for k, v in self._it.get_state().items()}

    def set_state(self, state):
        self._it.set_state(dict(state))


def only_backbone(variables: dict) -> dict:
    """The ``backbone`` part of transfer-layout variables (what a probe stores in backbone.npz)."""
    return {c: {"backbone": variables[c]["backbone"]} if "backbone" in variables[c] else {}
            for c in ("params", "batch_stats")}


class LinearProbeTask:
    """The trainer's task for a linear probe on cached features of a backbone."""

    def __init__(self, cfg, mesh, workdir: Path):
        if not cfg.model.init:
            raise ConfigError("recipe 'linear_probe' needs model.init: the backbone whose features to probe")
        if cfg.freeze:
            raise ConfigError("recipe 'linear_probe' trains only the linear head: leave freeze empty")
        backbone = ClassificationTask(cfg, mesh)  # the pretrained model on the same data
        self.normalization, self.classes = backbone.normalization, backbone.classes
        # The frozen backbone is part of the trained model: recorded in the run (backbone.npz),
        # which then needs neither model.init nor the training data to evaluate or predict.
        self.backbone_variables = jax.device_get(only_backbone(backbone.state.variables))
        with phase("extracting features"):
            feats = self._extract(cfg, backbone, mesh, Path(workdir) / "features")
        self.head_regex = r"^(?!)"  # no head/backbone split: every parameter is the classifier
        self.head = Dense(cfg.model.num_classes)  # params/head of the transfer layout; the backbone is not trained
        train_f, train_y = feats.pop("__train__")
        variables = self.head.init(jax.random.key(cfg.seed), jnp.zeros((1, train_f.shape[1])))
        params = {"head": jax.tree.map(np.asarray, variables["params"])}
        self.lr = make_schedule(cfg)
        self.train_iterator = _ArrayIterator(_Arrays(train_f, train_y), cfg.batch_size, cfg.seed, True)
        self.eval_iterators = {
            label: (lambda f=f, y=y: _ArrayIterator(_Arrays(f, y), cfg.eval_batch_size, cfg.seed, False))
            for label, (f, y) in feats.items()
        }
        self.images_per_step = cfg.batch_size
        self.state = initial_state(params, {}, self.optimizer(cfg, params).init(params), cfg.seed, mesh)

    @staticmethod
    def optimizer(cfg, params):
        """One parameter group: everything is the head."""
        probe = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)  # no deep copy: values may be tracers
        probe.optim.groups = (("head", r".", 1.0),)
        return make_optimizer(probe, params)

    @staticmethod
    def _extract(cfg, backbone, mesh, cache: Path) -> dict:
        eval_step = make_eval_step(backbone.forward, mesh)
        key = hashlib.sha256(f"{cfg.model.init}|{cfg.data.to_json_best_effort()}|{cfg.seed}".encode()).hexdigest()[:12]
        cache.mkdir(parents=True, exist_ok=True)
        norm = backbone.normalization
        train_src = load_source(cfg, cfg.data.train, cfg.data.train_split, budget=True)
        splits = {"__train__": lambda: jdata.make_iterator(
            train_src, batch_size=cfg.eval_batch_size, seed=cfg.seed, train=False,
            normalize=(norm["mean"], norm["std"]), **jdata.geometry(norm), channels=norm["channels"],
            output="uint8")}
        splits.update(backbone.eval_iterators)
        out = {}
        for label, make_it in splits.items():
            path = cache / f"{label.strip('_')}-{key}.npz"
            if path.exists():
                try:
                    with np.load(path) as z:
                        f, y = z["features"], z["labels"]
                except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, KeyError, ValueError, ...
                    raise DataError(f"feature cache {path} is damaged ({type(e).__name__}); delete it and "
                                    "rerun: the features are extracted again") from None
                if not np.isfinite(f).all():
                    raise DataError(f"feature cache {path} holds NaN or inf; delete it and rerun: the features "
                                    "are extracted again")
                out[label] = (f, y)
                continue
            fs, ys = [], []
            for batch in make_it():
                mask = np.asarray(batch.pop("mask", np.ones(len(batch["label"]), bool)))
                pooled = np.asarray(jax.device_get(eval_step(backbone.state, shard_batch(mesh, batch)))["pooled"])
                fs.append(pooled[mask])
                ys.append(np.asarray(batch["label"])[mask])
            f, y = np.concatenate(fs).astype(np.float32), np.concatenate(ys).astype(np.int32)
            if not np.isfinite(f).all():
                raise DataError(f"the backbone model.init={cfg.model.init!r} gives NaN or inf features on "
                                f"{label.strip('_')}; check those weights")
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, features=f, labels=y)
            tmp.replace(path)
            out[label] = (f, y)
        return out

    def forward(self, variables, batch, train: bool, rng=None):
        """The head on cached pooled features: ``logits = f W + b``."""
        logits = self.head.apply({"params": variables["params"]["head"]}, batch["image"])
        return {"logits": logits, "features": {"pooled": batch["image"]}}, variables["batch_stats"]

    def make_step(self, loss_fn, cfg):
        return make_train_step(loss_fn, self.optimizer(cfg, self.state.params))

    @staticmethod
    def prepare(batch: dict) -> dict:
        return {"image": batch["image"], "label": batch["label"]}
