"""``load(name, split, **options)``, ``info(name)``, ``num_classes(name)``: names to sources."""

from __future__ import annotations

import numpy as np

from jtl.data import builders, folder, spec as spec_lib, splits
from jtl.data import shifts as shifts_lib
from jtl.data.source import Info, Source
from jtl.errors import DataError

OPTIONS = {
    "classes", "limit", "seed", "val_fraction", "test_fraction", "backgrounds", "on_error",
    "data_dir", "image_key", "label_key", "download",
}
# Default held-out fractions for datasets without official val/test splits.
DEFAULT_FRACTIONS = {"digits": (0.2, 0.2), "folder": (0.2, 0.0)}


def load(name: str, split: str = "train", **options) -> Source:
    """The ``split`` of dataset ``name`` (grammar in :mod:`jtl.data`), as a :class:`Source`."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise DataError(f"{name}: unknown load option(s) {sorted(unknown)}; known: {', '.join(sorted(OPTIONS))}")
    sp = spec_lib.parse(name)
    seed = int(options.get("seed", 0))
    val_f, test_f = _fractions(sp, options)
    if sp.kind == "folder":
        src = _folder(sp, name, split, seed, val_f, test_f, options.get("on_error", "raise"))
    elif sp.kind == "tfds":
        from jtl.data import catalog

        src = catalog.load(sp.base, name, split, seed, val_f, options)
    elif sp.kind == "benchmark":
        from jtl.data.benchmarks import store

        src = store.load(sp, name, split, seed, val_f, test_f, options)
    elif sp.shifts:
        src = _shifted(sp, name, split, seed, val_f, test_f, options.get("backgrounds"))
    else:
        src = _builtin(sp, name, split, seed, val_f, test_f)
    if options.get("classes") is not None:
        keep, new = splits.select_classes(src.labels, options["classes"], src.info.num_classes, name)
        kept = tuple(src.info.class_names[c] for c in options["classes"])
        src = src.subset(keep, new)
        src.info = Info(src.info.name, kept, src.info.image_shape, src.info.splits)
    if options.get("limit") is not None:
        src = src.subset(splits.stratified_subset(src.labels, int(options["limit"]), seed, name))
    if len(src) == 0:
        raise DataError(f"{name}: split {split!r} is empty with options {options}")
    return src


def info(name: str, **options) -> Info:
    """Class names, image shape (H, W, C; None where sizes vary) and splits of ``name``."""
    sp = spec_lib.parse(name)
    if sp.kind == "builtin":
        cls = builders.BASES[sp.base]
        shape = shifts_lib.output_shape(builders.base_shape(sp.base), sp.shifts)
        result = Info(name, builders.class_names(cls), shape, _builtin_splits(sp, *_fractions(sp, options)))
    elif sp.kind == "folder":
        dirs = folder.split_dirs(sp.base)
        if dirs:  # a split folder: its directory names, no image opened
            result = Info(name, folder.class_names(sp.base), (None, None, 3),
                          _split_folder_splits(dirs, *_fractions(sp, options)))
        else:
            classes, _, _ = folder.scan(sp.base, options.get("on_error", "raise"))
            result = Info(name, classes, (None, None, 3), _folder_splits(*_fractions(sp, options)))
    elif sp.kind == "benchmark":
        from jtl.data.benchmarks import store

        result = store.info(name, sp, _fractions(sp, options)[0])
    else:
        from jtl.data import catalog

        result = catalog.info(sp.base, name, options)
    if options.get("classes") is not None:
        cls_ids = list(options["classes"])
        splits.select_classes(np.asarray(cls_ids), cls_ids, result.num_classes, name)  # validates
        result = Info(name, tuple(result.class_names[c] for c in cls_ids), result.image_shape, result.splits)
    return result


def num_classes(name: str, **options) -> int:
    """Number of classes of ``name`` (after ``classes=`` if given)."""
    return info(name, **options).num_classes


# ---------------------------------------------------------------- helpers


def _fractions(sp, options) -> tuple[float, float]:
    key = sp.kind if sp.kind == "folder" else sp.base
    val_d, test_d = DEFAULT_FRACTIONS.get(key, (0.0, 0.0))
    if sp.kind == "folder" and folder.split_dirs(sp.base):
        val_d = 0.0  # a split folder has its splits: nothing is held out unless asked
    val_f, test_f = float(options.get("val_fraction", val_d)), float(options.get("test_fraction", test_d))
    if not (0 <= val_f < 1 and 0 <= test_f < 1 and val_f + test_f < 1):
        raise DataError(f"{sp}: val_fraction={val_f} and test_fraction={test_f} must be >= 0 and sum to < 1")
    return val_f, test_f


def _builtin_splits(sp, val_f, test_f) -> tuple[str, ...]:
    if sp.base == "digits" and not sp.shifts:
        return ("train", "val", "test", "all")
    return ("train",) + (("val",) if val_f > 0 else ()) + ("test",) + (("all",) if sp.shifts else ())


def _folder_splits(val_f, test_f) -> tuple[str, ...]:
    return ("train",) + (("val",) if val_f > 0 else ()) + (("test",) if test_f > 0 else ()) + ("all",)


def _pick(name, split, parts: dict[str, np.ndarray], available) -> np.ndarray:
    if split not in parts:
        hint = {"val": "; pass val_fraction=0.1 to carve one from train",
                "test": "; a folder: give it train/ and test/ directories, or pass test_fraction=0.2 "
                        "(jtl train: --config.adapt.target_test_fraction for the target, "
                        "--config.data.test_fraction for data.train)"}.get(split, "")
        raise DataError(f"{name}: no split {split!r} (available: {', '.join(available)}){hint}")
    return parts[split]


def _carve_val(parts: dict, labels: np.ndarray, val_f: float, seed: int) -> dict:
    """Move a stratified ``val_f`` of ``parts["train"]`` into ``parts["val"]``."""
    if val_f <= 0:
        return parts
    train = parts["train"]
    rest, val = splits.partition(labels[train], (1 - val_f, val_f), seed, tag=2)
    return {**parts, "train": train[rest], "val": train[val]}


def _builtin(sp, name, split, seed, val_f, test_f) -> Source:
    cls = builders.BASES[sp.base]
    builder = builders.prepared(cls)
    meta = Info(name, builders.class_names(cls), builders.base_shape(sp.base), _builtin_splits(sp, val_f, test_f))
    if sp.base == "fashion_mnist":
        if split == "test":
            images, labels = builders.read_arrays(builder, "test")
            return Source(name, split, meta, images, np.arange(len(labels)), labels)
        images, labels = builders.read_arrays(builder, "train")
        parts = _carve_val({"train": np.arange(len(labels))}, labels, val_f, seed)
    else:
        images, labels = builders.read_arrays(builder, "full")
        parts = digits_parts(labels, seed, val_f, test_f)
    idx = _pick(name, split, parts, meta.splits)
    return Source(name, split, meta, images, idx, labels[idx])


def digits_parts(labels, seed, val_f, test_f) -> dict[str, np.ndarray]:
    train, val, test = splits.partition(labels, (1 - val_f - test_f, val_f, test_f), seed, tag=1)
    return {"train": train, "val": val, "test": test, "all": np.arange(len(labels))}


def _shifted(sp, name, split, seed, val_f, test_f, backgrounds) -> Source:
    """Shifted images of the base's held-out examples, split 50/50 (stratified) into train/test."""
    cfg = builders.shift_config(sp.base, sp.shifts, sp.shift_seed, backgrounds)
    builder = builders.prepared(builders.Shifted, cfg)
    images, labels, base_index = builders.read_arrays(builder, "pool", with_index=True)
    if sp.base == "digits":  # held out = digits val + test for this seed (no digits train image)
        base_parts = digits_parts(labels, seed, *DEFAULT_FRACTIONS["digits"])
        pool = np.sort(np.concatenate([base_parts["val"], base_parts["test"]]))
    else:  # held out = the official test split
        pool = np.arange(len(labels))
    train, test = splits.partition(labels[pool], (0.5, 0.5), seed, tag=3)
    parts = _carve_val({"train": pool[train], "test": pool[test], "all": pool}, labels, val_f, seed)
    meta = Info(
        name, builders.class_names(builders.BASES[sp.base]), images.shape[1:], _builtin_splits(sp, val_f, test_f)
    )
    idx = _pick(name, split, parts, meta.splits)
    assert np.array_equal(base_index, np.arange(len(base_index)))  # pool i is held-out image i
    return Source(name, split, meta, images, idx, labels[idx])


def _split_folder_splits(dirs, val_f, test_f) -> tuple[str, ...]:
    return ("train",) + (("val",) if "val" in dirs or val_f > 0 else ()) + (
        ("test",) if "test" in dirs or test_f > 0 else ())


def _split_folder(sp, name, split, seed, val_f, test_f, on_error, dirs) -> Source:
    """A split of ``root/{train,val,test}/<class>/``: its own directory, scanned alone, or (``val``,
    ``test`` without a directory) a stratified ``val_f`` / ``test_f`` carved out of ``train``."""
    classes = folder.class_names(sp.base)
    meta = Info(name, classes, (None, None, 3), _split_folder_splits(dirs, val_f, test_f))
    if split not in meta.splits:
        _pick(name, split, {}, meta.splits)
    if split in dirs and split != "train":
        _, files, labels = folder.scan(str(dirs[split]), on_error, classes)
        return Source(name, split, meta, folder.Reader(files, on_error), np.arange(len(files)), labels)
    _, files, labels = folder.scan(str(dirs["train"]), on_error, classes)
    carve_val, carve_test = (0.0 if "val" in dirs else val_f), (0.0 if "test" in dirs else test_f)
    train, val, test = splits.partition(labels, (1 - carve_val - carve_test, carve_val, carve_test), seed, tag=4)
    idx = {"train": train, "val": val, "test": test}[split]
    return Source(name, split, meta, folder.Reader(files, on_error), idx, labels[idx])


def _folder(sp, name, split, seed, val_f, test_f, on_error) -> Source:
    if on_error not in ("raise", "skip"):
        raise DataError(f"{name}: on_error must be 'raise' or 'skip', got {on_error!r}")
    dirs = folder.split_dirs(sp.base)
    if dirs:
        return _split_folder(sp, name, split, seed, val_f, test_f, on_error, dirs)
    classes, files, labels = folder.scan(sp.base, on_error)
    train, val, test = splits.partition(labels, (1 - val_f - test_f, val_f, test_f), seed, tag=4)
    parts = {"train": train, "all": np.arange(len(files))}
    if val_f > 0:
        parts["val"] = val
    if test_f > 0:
        parts["test"] = test
    meta = Info(name, classes, (None, None, 3), _folder_splits(val_f, test_f))
    idx = _pick(name, split, parts, meta.splits)
    return Source(name, split, meta, folder.Reader(files, on_error), idx, labels[idx])
