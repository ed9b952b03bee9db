"""Balanced multi-domain batches: every step takes ``batch_size / D`` examples of each domain.

The batch is domain-major: rows ``[d * b, (d + 1) * b)`` come from source domain ``d``, and
``domain`` holds each row's domain index, so losses can reshape any per-example array to
``(D, b, ...)``. Each domain's stream is its own resumable grain iterator; the state is theirs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class DomainBatches:
    """Concatenates one batch of each per-domain iterator: ``{"image", "label", "domain"}``."""

    def __init__(self, iterators: Sequence):
        self.iterators = list(iterators)
        self.mean, self.std = self.iterators[0].mean, self.iterators[0].std

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batches = [next(it) for it in self.iterators]
        return {
            "image": np.concatenate([b["image"] for b in batches]),
            "label": np.concatenate([b["label"] for b in batches]),
            "domain": np.concatenate([np.full(len(b["label"]), d, np.int32) for d, b in enumerate(batches)]),
        }

    def get_state(self) -> dict[str, Any]:
        return {str(d): it.get_state() for d, it in enumerate(self.iterators)}

    def set_state(self, state: dict[str, Any]) -> None:
        for d, it in enumerate(self.iterators):
            it.set_state(state[str(d)])


def disjoint_positions(base_index: np.ndarray, position: int, num_domains: int) -> np.ndarray:
    """Positions of the examples whose base image ``i`` has ``i % num_domains == position``: domains
    built from one base dataset by a shift then hold disjoint images, as DomainBed's RotatedMNIST
    (each angle rotates its own share of the images)."""
    return np.flatnonzero(np.asarray(base_index) % num_domains == position)
