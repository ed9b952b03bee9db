"""Benchmarks as prepared TFDS datasets and as :class:`jtl.data.source.Source` splits.

One array_record split ``images`` (every image of the domain) per (dataset, domain) under
``$JTL_DATA_DIR/jtl_benchmark/<dataset>.<domain>/``: fixed-size datasets (digits, CIFAR,
STL) as uint8 ``(H, W, C)`` tensors read into memory; the others as their encoded image
files (uint8 byte strings), decoded one by one when a batch is read (grain's threads), so a
domain of 175,000 photos never sits in memory. The labels and the published splits (index
lists into ``images``) are kept in the dataset's metadata, so a split is chosen without
reading a single image.

Splits: where the publisher gives train/test lists they are ``train`` / ``test``; a
whole-domain dataset (Office-31, Office-Home, VisDA-2017) has ``train`` = ``test`` =
``all`` (the transductive UDA protocol) unless ``test_fraction`` holds a stratified part
out; ``val`` is the published one (PACS) or ``val_fraction`` of ``train`` (stratified).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jtl.data import builders, splits
from jtl.data.benchmarks import base, registry
from jtl.data.benchmarks.cifar_stl import VIEWS, nine_class_labels
from jtl.data.decode import decode_image
from jtl.data.source import Info, Source
from jtl.errors import DataError


@dataclasses.dataclass(eq=False)
class BenchmarkConfig(tfds.core.BuilderConfig):
    """One domain of one benchmark; ``download=False`` never touches the network."""

    dataset: str = ""
    domain: str = ""
    download: bool = True


def config(dataset: str, domain: str, download: bool = True) -> BenchmarkConfig:
    return BenchmarkConfig(name=f"{dataset}.{domain}" if domain else dataset, version="1.0.0",
                           dataset=dataset, domain=domain, download=download)


class Prepared(builders._Builder, skip_registration=True):  # noqa: SLF001 - the package's no-source-path base
    """A benchmark domain as one split ``images``; ``metadata``: ``labels`` and ``splits`` (index lists)."""

    name = "jtl_benchmark"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        bench = registry.BENCHMARKS[self.builder_config.dataset]
        shape = bench.image_shape or (None,)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{bench.name} {self.builder_config.domain} ({bench.citation})",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(bench.classes)),
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        bench = registry.BENCHMARKS[cfg.dataset]
        root = base.ensure(bench, cfg.domain, builders.data_dir(), cfg.download)
        parts = bench.read(root, cfg.domain)
        if bench.image_shape is not None and tuple(np.shape(parts.items)[1:]) != bench.image_shape:
            raise DataError(f"{root}: images have shape {np.shape(parts.items)[1:]}, not {bench.image_shape}; "
                            "delete it and run again")
        if not len(parts.labels) or parts.labels.min() < 0 or parts.labels.max() >= len(bench.classes):
            raise DataError(f"{root}: labels outside 0..{len(bench.classes) - 1} or no images; delete it and run again")
        self.info.metadata["labels"] = parts.labels.tolist()
        self.info.metadata["splits"] = {k: np.asarray(v).tolist() for k, v in parts.splits.items()}
        return {"images": self._generate_examples(parts)}

    def _generate_examples(self, parts: base.Parts):
        for i, label in enumerate(parts.labels):
            image = parts.items[i] if isinstance(parts.items, np.ndarray) else _encoded(parts.items[i])
            yield i, {"image": image, "label": int(label)}


def _encoded(path) -> np.ndarray:
    """The file's bytes, once PIL has recognised them as an image."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)):
            pass
    except FileNotFoundError:
        raise DataError(f"{path} is listed but missing; the layout is incomplete (restore it, or delete "
                        f"the dataset folder and run again)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        raise DataError(f"{path}: not a readable image ({type(e).__name__}); restore or delete it") from None
    return np.frombuffer(data, np.uint8)


class EncodedImages:
    """``reader(i) -> uint8 (H, W, 3)``: stored image i decoded (:func:`jtl.data.decode.decode_image`)."""

    def __init__(self, builder, name: str):
        self.source, self.name = builder.as_data_source(split="images"), name

    def __call__(self, i: int) -> np.ndarray:
        raw = np.asarray(self.source[int(i)]["image"], np.uint8)
        try:
            return decode_image(io.BytesIO(raw.tobytes()), 3)
        except DataError as e:
            raise DataError(f"{self.name}: stored image {i}: {str(e).split(': ', 1)[-1]}") from None


def info(name: str, sp, val_f: float = 0.0) -> Info:
    """Class names, image shape and splits, from the registry alone (no file read)."""
    bench = registry.stored(sp.base)
    splits_ = bench.splits + (("val",) if val_f > 0 and "val" not in bench.splits else ())
    return Info(name, registry.class_names(sp.base), bench.image_shape or (None, None, 3), splits_)


def load(sp, name: str, split: str, seed: int, val_f: float, test_f: float, options: dict) -> Source:
    """The ``split`` of benchmark ``sp`` (prepared on first use)."""
    if options.get("data_dir"):
        raise DataError(f"{name}: benchmarks live under $JTL_DATA_DIR (now {builders.data_dir()}); "
                        "set JTL_DATA_DIR instead of passing data_dir")
    bench = registry.stored(sp.base)
    builder = builders.prepared(Prepared, config(bench.name, sp.domain, bool(options.get("download", True))))
    labels = np.asarray(builder.info.metadata["labels"], np.int32)
    parts = split_indices(bench, {k: np.asarray(v, np.int64) for k, v in builder.info.metadata["splits"].items()},
                          labels, seed, val_f, test_f, name)
    if bench.image_shape is not None:
        images, _ = builders.read_arrays(builder, "images")
    else:
        images = EncodedImages(builder, name)
    class_names = bench.classes
    if sp.base in VIEWS:  # the 9-class protocol: drop the unmatched class, relabel by name
        lut = nine_class_labels(bench.name, bench.classes)
        parts = {k: v[lut[labels[v]] >= 0] for k, v in parts.items()}
        labels, class_names = lut[labels].astype(np.int32), registry.class_names(sp.base)
    meta = Info(name, class_names, bench.image_shape or (None, None, 3), tuple(parts))
    if split not in parts:
        hint = "; pass val_fraction=0.1 to carve one from train" if split == "val" else ""
        raise DataError(f"{name}: no split {split!r} (available: {', '.join(parts)}){hint}")
    idx = parts[split]
    return Source(name, split, meta, images, idx, labels[idx])


def split_indices(bench, published: dict, labels: np.ndarray, seed: int, val_f: float, test_f: float,
                  name: str) -> dict[str, np.ndarray]:
    """``train`` / ``val`` / ``test`` / ``all`` index arrays (rules in the module docstring)."""
    everything = np.arange(len(labels))
    if "train" in published:
        if test_f > 0:
            raise DataError(f"{name}: has a published test split; test_fraction applies to whole-domain datasets only")
        train, test = published["train"], published.get("test", everything)
    elif test_f > 0:
        train, test = splits.partition(labels, (1 - test_f, test_f), seed, tag=5)
    else:
        train = test = everything
    out = {"train": train, "test": test, "all": everything}
    if "val" in published:
        out["val"] = published["val"]
    elif val_f > 0:
        rest, val = splits.partition(labels[train], (1 - val_f, val_f), seed, tag=2)
        out["train"], out["val"] = train[rest], train[val]
    return out
