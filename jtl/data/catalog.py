"""TFDS catalog passthrough (``tfds:NAME``): ``tfds.data_source`` under :func:`builders.data_dir`.

Preparing most catalog datasets needs TensorFlow and the network (or files already
prepared in ``data_dir``); reading prepared array_record files needs neither. Split
names are TFDS's (``train``, ``test``, ``train[:10%]``, ...); ``val`` means TFDS's
``validation`` where it exists, else a stratified ``val_fraction`` carved from ``train``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jtl.data import builders, splits
from jtl.data.source import Info, Source
from jtl.errors import DataError


def _builder(tfds_name: str, name: str, options: dict):
    data_dir = str(options.get("data_dir") or builders.data_dir())
    try:
        return tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError, config errors, ...
        raise DataError(f"{name}: TFDS has no dataset {tfds_name!r} ({type(e).__name__}); see tfds.list_builders()") from None


def _keys(builder, name: str, options: dict) -> tuple[str, str]:
    feats = builder.info.features
    image_key, label_key = options.get("image_key", "image"), options.get("label_key", "label")
    for key in (image_key, label_key):
        if key not in feats:
            raise DataError(f"{name}: no feature {key!r} (has {', '.join(feats)}); pass image_key=/label_key=")
    return image_key, label_key


def info(tfds_name: str, name: str, options: dict) -> Info:
    builder = _builder(tfds_name, name, options)
    image_key, label_key = _keys(builder, name, options)
    shape = tuple(builder.info.features[image_key].shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    names = tuple(builder.info.features[label_key].names)
    available = tuple(builder.info.splits.keys()) or ("train", "test")
    return Info(name, names, shape, available)


def _data_source(tfds_name, name, split, options, decoders=None):
    try:
        return tfds.data_source(
            tfds_name,
            split=split,
            data_dir=str(options.get("data_dir") or builders.data_dir()),
            download=bool(options.get("download", True)),
            decoders=decoders,
        )
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"{name}: cannot prepare split {split!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "catalog datasets need TensorFlow and the network to prepare, or prepared files in data_dir"
        ) from None


def load(tfds_name: str, name: str, split: str, seed: int, val_f: float, options: dict) -> Source:
    meta = info(tfds_name, name, options)
    builder = _builder(tfds_name, name, options)
    image_key, label_key = _keys(builder, name, options)
    has_validation = "validation" in builder.info.splits or "validation" in meta.splits
    tfds_split = "validation" if split == "val" and has_validation else split
    carve = split in ("train", "val") and not has_validation and val_f > 0
    if split == "val" and not has_validation and val_f <= 0:
        raise DataError(f"{name}: no validation split; pass val_fraction=0.1 to carve one from train")
    if carve:
        tfds_split = "train"
    ds = _data_source(tfds_name, name, tfds_split, options)
    labels = _labels(tfds_name, name, tfds_split, options, ds, image_key, label_key)
    index = np.arange(len(labels))
    if carve:
        rest, val = splits.partition(labels, (1 - val_f, val_f), seed, tag=2)
        index = val if split == "val" else rest

    def read(i: int) -> np.ndarray:
        img = np.asarray(ds[i][image_key], np.uint8)
        return img[..., None] if img.ndim == 2 else img

    return Source(name, split, meta, read, index, labels[index])


def _labels(tfds_name, name, split, options, ds, image_key, label_key) -> np.ndarray:
    """All labels of a split, skipping image decoding where tfds can (it needs TF for some features)."""
    try:
        fast = _data_source(tfds_name, name, split, options, decoders={image_key: tfds.decode.SkipDecoding()})
        return np.asarray([e[label_key] for e in _chunks(fast)], np.int32)
    except Exception:  # noqa: BLE001 - e.g. no TensorFlow for SkipDecoding: decode everything
        return np.asarray([e[label_key] for e in _chunks(ds)], np.int32)


def _chunks(ds, size: int = 1024):
    for start in range(0, len(ds), size):
        keys = list(range(start, min(len(ds), start + size)))
        try:
            yield from ds.__getitems__(keys)
        except TypeError:  # tfds.testing.mock_data's sources read one record at a time
            yield from (ds[k] for k in keys)
