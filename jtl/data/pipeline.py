"""Input pipelines on grain: shuffled, repeated, batched, sharded, resumable.

Indices flow through grain (``MapDataset.range -> slice (process shard) -> shuffle ->
repeat -> batch``) and one ``random_map`` per batch reads the examples and augments
them, seeded by grain with (seed, batch index). So a batch depends only on the seed and
its position: the iterator's state is ``{"next_index": k}`` and a restored iterator
yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Sequence

import grain
import numpy as np

from jtl.data import augment as aug_lib
from jtl.errors import DataError


def _seeds(seed: int, source) -> tuple[int, int]:
    """(shuffle seed, augmentation seed), hashed from the seed and the source's name and split.

    grain seeds epoch e of a shuffle with ``seed + e``: hashing keeps seeds s and s + 1
    (and two datasets given the same seed) from sharing permutations.
    """
    tags = [zlib.crc32(str(getattr(source, "name", "")).encode()), zlib.crc32(str(getattr(source, "split", "")).encode())]
    s = np.random.SeedSequence([int(seed), *tags]).generate_state(2)
    return int(s[0]), int(s[1])


def dataset_stats(source, channels: int | None = None, max_images: int = 10000, seed: int = 0):
    """Per-channel mean and std of pixel values / 255 over up to ``max_images`` seeded images."""
    n = len(source)
    fixed = None not in source.info.image_shape[:2]
    take = min(n, max_images if fixed else min(max_images, 500))
    idx = np.sort(np.random.default_rng(seed).choice(n, take, replace=False))
    total, sq, count = 0.0, 0.0, 0
    for start in range(0, take, 1024):
        imgs = source.getitems(idx[start : start + 1024])["image"]
        for x in imgs if not isinstance(imgs, np.ndarray) else [imgs]:
            x = aug_lib.to_channels(np.asarray(x), channels).astype(np.float64) / 255.0
            x = x.reshape(-1, x.shape[-1])
            total, sq, count = total + x.sum(0), sq + (x * x).sum(0), count + len(x)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class _Batch(grain.transforms.RandomMap):
    """positions (B,) -> batch dict; eval batches get ``mask`` (False on padding)."""

    def __init__(self, source, size, channels, aug, mean, std, output, masked, stream=None, with_index=False,
                 resize=0):
        self.source, self.size, self.channels, self.aug, self.resize = source, size, channels, aug, resize
        self.mean, self.std, self.output, self.masked = mean, std, output, masked
        self.stream = stream  # with several processes: this process's own random stream
        self.with_index = with_index  # add "index": each example's position in the source (its id)

    def random_map(self, positions, rng: np.random.Generator):
        if self.stream is not None and rng is not None:  # processes get the same seed per batch
            rng = np.random.default_rng((int(rng.integers(2**63)), self.stream))
        positions = np.asarray(positions, np.int64)
        valid = positions < len(self.source)
        ex = self.source.getitems(np.where(valid, positions, 0))
        x = aug_lib.geometric(ex["image"], self.size, self.aug, rng, self.resize)
        x = aug_lib.to_channels(x, self.channels)
        if "jitter" in self.aug:
            x = aug_lib.jitter(x, rng, **self.aug["jitter"])
        if self.output == "uint8":
            x = x if x.dtype == np.uint8 else np.round(x).astype(np.uint8)
        else:
            x = aug_lib.normalize(x, self.mean, self.std)
        batch = {"image": x, "label": np.asarray(ex["label"], np.int32)}
        if self.with_index:
            batch["index"] = positions.astype(np.int32)
        if self.masked:
            batch["mask"] = valid
            batch["label"] = np.where(valid, batch["label"], 0).astype(np.int32)
            if not valid.all():
                batch["image"] = np.where(valid[:, None, None, None], x, np.zeros_like(x))
        return batch

    def map(self, positions):
        return self.random_map(positions, None)


class _ProcessSlice(grain.transforms.Map):
    """Global batch positions -> this process's contiguous slice of them."""

    def __init__(self, start: int, size: int):
        self.start, self.size = start, size

    def map(self, positions):
        return np.asarray(positions)[self.start : self.start + self.size]


class DataIterator:
    """Iterator over batches with ``get_state()``/``set_state()`` (a dict of ints, JSON-serialisable)."""

    def __init__(self, ds, *, seed, source, batch_size, mean, std, num_batches):
        self._ds, self._it = ds, iter(ds)
        self.seed, self.source, self.batch_size = seed, source, batch_size
        self.mean, self.std, self.num_batches = mean, std, num_batches

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("a training iterator is infinite")
        return self.num_batches

    def get_state(self) -> dict[str, Any]:
        return {k: int(v) for k, v in self._it.get_state().items()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(dict(state))

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def _mean_std(normalize, source, channels):
    c = channels or source.info.channels
    if normalize is None:
        return (0.0,) * c, (1.0,) * c
    if normalize in ("imagenet", "inception"):
        mean, std = ((aug_lib.IMAGENET_MEAN, aug_lib.IMAGENET_STD) if normalize == "imagenet"
                     else (aug_lib.INCEPTION_MEAN, aug_lib.INCEPTION_STD))
        if c == 1:  # gray input to an RGB-trained normalisation: average the channels
            mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
        return tuple(mean), tuple(std)
    if normalize == "dataset":
        return dataset_stats(source, channels)
    try:
        mean, std = normalize
        return tuple(map(float, mean)), tuple(map(float, std))
    except (TypeError, ValueError):
        raise DataError(f"normalize must be 'imagenet', 'dataset', None or (mean, std), got {normalize!r}") from None


def make_iterator(
    source,
    *,
    batch_size: int,
    seed: int,
    train: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    augment: Sequence = ("crop", "flip"),
    normalize: Any = "imagenet",
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool | None = None,
    output: str = "float32",
    num_threads: int | None = None,
    prefetch: int = 4,
    with_index: bool = False,
    resize: int = 0,
    eval_crop: str = "none",
) -> DataIterator:
    """Batches of ``source`` (see :mod:`jtl.data` for the contract); ``resize``, ``eval_crop``:
    :mod:`jtl.data.augment` (:func:`jtl.data.geometry` reads all three sizes from a config)."""
    n = len(source)
    if batch_size <= 0 or not 0 <= process_index < process_count:
        raise DataError(f"bad batch_size={batch_size} or process {process_index} of {process_count}")
    if output not in ("float32", "uint8"):
        raise DataError(f"output must be 'float32' or 'uint8', got {output!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be None, 1 or 3, got {channels!r}")
    bad_resize = isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 0
    if eval_crop not in aug_lib.EVAL_CROPS or bad_resize:
        raise DataError(f"eval_crop must be one of {', '.join(aug_lib.EVAL_CROPS)} and resize an integer >= 0 "
                        f"(0: off), got {eval_crop!r} and {resize!r}")
    mean, std = _mean_std(normalize, source, channels)
    shuffle_seed, map_seed = _seeds(seed, source)
    threads = min(4, os.cpu_count() or 1) if num_threads is None else num_threads
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    # Every process walks the same sequence of global batches (batch_size * process_count
    # positions) and keeps its slice of each: the global batches do not depend on the
    # number of processes.
    per_step = batch_size * process_count
    mine = _ProcessSlice(process_index * batch_size, batch_size) if process_count > 1 else None
    if train:
        if n < per_step:
            raise DataError(f"{source!r}: {n // process_count} examples per process, "
                            f"fewer than batch_size={batch_size}")
        transform = _Batch(source, image_size, channels, aug_lib.parse(augment), mean, std, output, False,
                           stream=process_index if mine is not None else None, with_index=with_index, resize=resize)
        ds = grain.MapDataset.range(n).shuffle(seed=shuffle_seed).repeat(None).batch(per_step, drop_remainder=True)
        if mine is not None:
            ds = ds.map(mine)
        ds = ds.random_map(transform, seed=map_seed)
        num_batches = None
    else:
        total = (n // per_step if drop_remainder else -(-n // per_step)) * per_step
        if total == 0:
            raise DataError(f"{source!r}: fewer examples than one global batch ({per_step}) with drop_remainder")
        ds = grain.MapDataset.range(total).batch(per_step)
        if mine is not None:
            ds = ds.map(mine)
        transform = _Batch(source, image_size, channels, aug_lib.EVAL_CROPS[eval_crop], mean, std, output, True,
                           with_index=with_index, resize=resize)
        ds = ds.map(transform.map)
        num_batches = len(ds)
    return DataIterator(
        ds.to_iter_dataset(read), seed=seed, source=source, batch_size=batch_size, mean=mean, std=std,
        num_batches=num_batches,
    )


class PairedIterator:
    """``{"source": batch, "target": batch}``; the state holds both iterators' states."""

    def __init__(self, source_iter: DataIterator, target_iter: DataIterator):
        self.source, self.target = source_iter, target_iter

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return {"source": next(self.source), "target": next(self.target)}

    def get_state(self) -> dict[str, Any]:
        return {"source": self.source.get_state(), "target": self.target.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.source.set_state(state["source"])
        self.target.set_state(state["target"])


def paired_iterator(source_iter: DataIterator, target_iter: DataIterator) -> PairedIterator:
    """Zip a source and a target iterator; their shuffles must be independent (different seeds)."""
    same = (
        getattr(source_iter, "seed", None) == getattr(target_iter, "seed", None)
        and getattr(source_iter.source, "name", 0) == getattr(target_iter.source, "name", 1)
        and getattr(source_iter.source, "split", 0) == getattr(target_iter.source, "split", 1)
    )
    if same:
        raise DataError("source and target iterators read the same data with the same seed; give the target another seed")
    return PairedIterator(source_iter, target_iter)
