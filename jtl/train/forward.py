"""The trainer's forward pass of a classifier, importable without the input pipeline's libraries.

``classification_forward(model, normalization)(variables, batch, train, rng)`` gives
``({"logits", "features"}, batch_stats)``; uint8 images are normalised on the device,
``(x / 255 - mean) / std``, float images are taken as already normalised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize_on_device(images, normalization: dict):
    """uint8 batches are normalised here, on the device; float batches are already normalised."""
    if images.dtype != jnp.uint8 or normalization is None:
        return images
    from jtl import data as jdata  # the input pipeline's package (grain, tfds): only for uint8 batches

    n = normalization
    return jdata.preprocess_on_device({"image": images}, n["mean"], n["std"])["image"]


def train_rngs(rng) -> dict:
    """The rng streams of a train-mode pass: ``"dropout"`` (dropout, stochastic depth)."""
    return {} if rng is None else {"dropout": jax.random.fold_in(rng, 0)}


def classification_forward(model, normalization: dict | None):
    """``forward(variables, batch, train, rng=None) -> ({"logits", "features"}, batch_stats)`` of a
    classifier: no data needed (``normalization`` None: the images are already normalised floats)."""

    def forward(variables, batch, train: bool, rng=None):
        x = normalize_on_device(batch["image"], normalization)
        if train:
            (logits, feats), upd = model.apply(variables, x, train=True, return_features=True, mutable=["batch_stats"],
                                               rngs=train_rngs(rng))
            return {"logits": logits, "features": feats}, upd.get("batch_stats", variables["batch_stats"])
        logits, feats = model.apply(variables, x, train=False, return_features=True)
        return {"logits": logits, "features": feats}, variables["batch_stats"]

    return forward
