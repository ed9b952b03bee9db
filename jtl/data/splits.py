"""Seeded, stratified index arithmetic: partitions, class subsets, label budgets."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jtl.errors import DataError


def rng(seed: int, *tags: int) -> np.random.Generator:
    """An independent stream per (seed, tags)."""
    return np.random.default_rng([int(seed), *map(int, tags)])


def partition(labels: np.ndarray, fractions: Sequence[float], seed: int, tag: int = 0) -> list[np.ndarray]:
    """Split ``arange(len(labels))`` into ``len(fractions)`` parts, stratified by label.

    Within class c (n_c examples, shuffled with ``seed``), part j gets the slice
    ``[round(F_{j-1} n_c), round(F_j n_c))`` with F the cumulative fractions. Parts are sorted.
    """
    fractions = np.asarray(fractions, float)
    bounds = np.cumsum(fractions) / fractions.sum()
    g = rng(seed, 7919, tag)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[g.permutation(len(idx))]
        cuts = np.concatenate([[0], np.round(bounds * len(idx)).astype(int)])
        for j in range(len(fractions)):
            parts[j].append(idx[cuts[j] : cuts[j + 1]])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def select_classes(labels: np.ndarray, classes: Sequence[int], num_classes: int, name: str):
    """Indices whose label is in ``classes`` and their new labels (position in ``classes``)."""
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or len(set(classes)) != len(classes) or not classes:
        raise DataError(f"{name}: classes={tuple(classes)} must be distinct labels in 0..{num_classes - 1}")
    lut = np.full(num_classes, -1, np.int64)
    lut[classes] = np.arange(len(classes))
    new = lut[labels]
    keep = np.flatnonzero(new >= 0)
    return keep, new[keep].astype(np.int32)


def stratified_subset(labels: np.ndarray, n: int, seed: int, name: str) -> np.ndarray:
    """``n`` indices, as balanced over classes as the data allow, chosen with ``seed``; sorted.

    Each class is shuffled; example ranks r = 0, 1, ... within its class; indices are
    taken by increasing rank (ties broken by a random class order) until n are taken,
    so class counts differ by at most one unless a class runs out.
    """
    if not 0 < n <= len(labels):
        raise DataError(f"{name}: limit={n} must be between 1 and the split size {len(labels)}")
    g = rng(seed, 104729)
    classes = np.unique(labels)
    class_order = g.permutation(len(classes))
    rank = np.empty(len(labels), np.int64)
    tiebreak = np.empty(len(labels), np.int64)
    for k, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        rank[idx[g.permutation(len(idx))]] = np.arange(len(idx))
        tiebreak[idx] = class_order[k]
    order = np.lexsort((tiebreak, rank))
    return np.sort(order[:n])


def run_fractions(cfg, name: str) -> dict[str, float]:
    """The held-out fractions run ``cfg`` loads dataset ``name`` with (:func:`jtl.data.load` options).

    The adaptation target (``name == adapt.target``) has its own, ``adapt.target_val_fraction``
    and ``adapt.target_test_fraction`` (default 0: every target image of the adapted split is
    used), wherever it is loaded (adapted on or evaluated), so its partitions agree. Every other
    dataset gets ``data.val_fraction`` / ``data.test_fraction`` where they are set, else its own
    defaults (:mod:`jtl.data`).
    """
    if cfg.adapt.target and name == cfg.adapt.target:
        out = {"val_fraction": float(cfg.adapt.target_val_fraction)}
        if cfg.adapt.target_test_fraction:
            out["test_fraction"] = float(cfg.adapt.target_test_fraction)
        return out
    out = {}
    if cfg.data.val_fraction:
        out["val_fraction"] = float(cfg.data.val_fraction)
    if cfg.data.test_fraction:
        out["test_fraction"] = float(cfg.data.test_fraction)
    return out
