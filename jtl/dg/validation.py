"""Where a domain-generalization run's training and validation images come from (``dg.val_split``).

- ``"carve"`` (DomainBed, Gulrajani & Lopez-Paz 2021): each domain's ``train`` split minus a
  stratified ``data.val_fraction`` of it, which is the ``val`` split (:mod:`jtl.data`); a dataset
  that publishes a val split gives that one instead (PACS: :mod:`jtl.data.benchmarks.pacs`).
- ``"published"``: the dataset's own ``train`` and ``val`` splits (PACS: the authors' lists,
  Li et al. 2017); ``data.val_fraction`` is not used, and every domain must publish a val split.
- ``"tllib"``: Transfer-Learning-Library's split (``examples/domain_generalization/
  image_classification/utils.py``, ``get_dataset`` and ``split_dataset``): each domain's ``all``
  images (in the published list's order), shuffled by ``numpy.random.RandomState(seed)``; the
  first ``int(n (1 - data.val_fraction))`` train, the rest validate (TLlib: 0.8 / 0.2).

Held-out domains are tested on their ``test`` split in every mode (PACS: the whole domain).
"""

from __future__ import annotations

import numpy as np

from jtl import data as jdata
from jtl.errors import ConfigError

MODES = ("carve", "published", "tllib")


def check(cfg) -> None:
    """One-line errors for ``dg.val_split`` and the fraction it needs."""
    mode = cfg.dg.val_split
    if mode not in MODES:
        raise ConfigError(f"dg.val_split must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "published":
        for name in cfg.dg.domains:
            # val_fraction=0: a val split carved out of train (the default fraction) is not its own
            if "val" not in jdata.info(name, on_error=cfg.data.on_error, val_fraction=0.0).splits:
                raise ConfigError(f"dg.val_split=published: {name} has no val split of its own; use "
                                  "dg.val_split=carve with data.val_fraction")
    elif not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"dg.val_split={mode} needs data.val_fraction in (0, 1): every domain's val split "
                          "is what model selection reads")


def tllib_positions(n: int, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """TLlib's ``split_dataset``: positions (train, val) of ``n`` images."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    cut = int(n * (1 - val_fraction))
    return order[:cut], order[cut:]


def domain_split(cfg, load, name: str, split: str):
    """``split`` (``train``, ``val`` or ``test``) of domain ``name`` under ``dg.val_split``;
    ``load(name, split, val_fraction)`` reads a split of a dataset."""
    mode = cfg.dg.val_split
    if split == "test" or mode == "carve":
        return load(name, split, float(cfg.data.val_fraction))
    if mode == "published":
        return load(name, split, 0.0)
    everything = load(name, "all", 0.0)
    train, val = tllib_positions(len(everything), int(cfg.seed), float(cfg.data.val_fraction))
    return everything.subset(np.sort(train) if split == "train" else np.sort(val))
