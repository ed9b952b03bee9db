"""The stream of test batches a test-time adaptation run sees.

A dataset split cut into full batches of ``batch_size`` images, in the order the split
stores them (``order="stored"``: for a corruption benchmark, one corruption after another
where they are concatenated) or in a seeded random order (``"shuffled"``). The last
``len % batch_size`` images would make a smaller batch, and thus a second compilation of the
update step and BatchNorm statistics over fewer images: they are left out, and counted.
"""

from __future__ import annotations

import numpy as np

from jtl import data as jdata
from jtl.errors import JtlError

ORDERS = ("stored", "shuffled")


def ordered(source, order: str, seed: int):
    """``source`` in stream order."""
    if order not in ORDERS:
        raise JtlError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    if order == "stored":
        return source
    return source.subset(np.random.default_rng(seed).permutation(len(source)))


def test_stream(source, *, batch_size: int, order: str = "stored", seed: int = 0, normalization: dict):
    """``(batches, dropped)``: ``batches`` yields ``(uint8 images (B, S, S, C), labels (B,))`` at the run's
    input size and channels; ``dropped`` images of the end make no full batch."""
    if batch_size < 1:
        raise JtlError(f"--batch-size must be at least 1, got {batch_size}")
    if len(source) < batch_size:
        raise JtlError(f"{source.name}:{source.split} has {len(source)} images, fewer than --batch-size "
                       f"{batch_size}; use a batch of {len(source)} or fewer")
    norm = normalization
    it = jdata.make_iterator(ordered(source, order, seed), batch_size=batch_size, seed=seed, train=False,
                             normalize=(norm["mean"], norm["std"]), **jdata.geometry(norm),
                             channels=norm["channels"], drop_remainder=True, output="uint8")
    batches = ((np.asarray(b["image"]), np.asarray(b["label"])) for b in it)
    return batches, len(source) % batch_size
