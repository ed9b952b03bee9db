"""CIFAR-10, STL-10, and the 9-class CIFAR-10 <-> STL-10 protocol.

- CIFAR-10 (Krizhevsky 2009): 50,000 / 10,000 32x32x3; ``cifar-10-python.tar.gz`` from
  https://www.cs.toronto.edu/~kriz/cifar.html with torchvision's md5
  (``torchvision/datasets/cifar.py``); batches are pickles of ``data`` (N, 3072) uint8
  (R, G, B planes, row-major) and ``labels``; ``batches.meta`` lists ``label_names``.
- STL-10 (Coates, Lee & Ng, AISTATS 2011): 5,000 / 8,000 96x96x3 labelled images
  (the 100,000 unlabelled ones are not used); ``stl10_binary.tar.gz`` from
  http://ai.stanford.edu/~acoates/stl10/ with torchvision's md5; ``*_X.bin`` are uint8
  (N, 3, 96, 96) stored column-major (so an image is ``x[c].T``), ``*_y.bin`` labels 1..10,
  ``class_names.txt`` one name per line.

9-class protocol (French, Mackiewicz & Fisher, "Self-ensembling for visual domain
adaptation", ICLR 2018; Shu et al., DIRT-T, ICLR 2018): CIFAR's ``frog`` and STL's
``monkey`` have no counterpart and are dropped; the other nine are matched by name, STL's
``car`` being CIFAR's ``automobile``. ``cifar9`` and ``stl9`` have the same nine class
names in the same order (:data:`NINE`), so either direction is a plain source -> target pair.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from jtl.data.benchmarks.base import Benchmark, Parts
from jtl.data.benchmarks.digits import SPLITS, two_splits
from jtl.data.benchmarks.download import Remote
from jtl.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
NINE = ("airplane", "automobile", "bird", "cat", "deer", "dog", "horse", "ship", "truck")
# name in the 10-class dataset -> name in the 9-class protocol (None: dropped)
NINE_FROM = {
    "cifar10": {**{c: c for c in NINE}, "frog": None},
    "stl10": {**{c: c for c in NINE if c != "automobile"}, "car": "automobile", "monkey": None},
}
VIEWS = {"cifar9": "cifar10", "stl9": "stl10"}  # a 9-class view -> the dataset it is read from

CIFAR_DIR, STL_DIR = "cifar-10-batches-py", "stl10_binary"


def _check_names(found, published, path) -> None:
    if tuple(found) != tuple(published):
        raise DataError(f"{path} lists classes {list(found)[:10]}, not the published {list(published)}")


def _unpickle(path: Path, key: str):
    """``key`` of a pickled CIFAR batch (Python 2 pickles, read as latin-1: str keys, arrays intact)."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")[key]
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}); delete {path.parent} and run again") from None


def _cifar(root: Path, _domain) -> Parts:
    base = root / CIFAR_DIR
    _check_names(_unpickle(base / "batches.meta", "label_names"), CIFAR10_CLASSES, base / "batches.meta")

    def batches(names):
        data = np.concatenate([_unpickle(base / n, "data") for n in names]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([_unpickle(base / n, "labels") for n in names]).astype(np.int32)
        return np.ascontiguousarray(data.transpose(0, 2, 3, 1), np.uint8), labels

    return two_splits(batches([f"data_batch_{i}" for i in range(1, 6)]), batches(["test_batch"]))


def _stl(root: Path, _domain) -> Parts:
    base = root / STL_DIR
    names = (base / "class_names.txt").read_text().split() if (base / "class_names.txt").is_file() else []
    _check_names(names, STL10_CLASSES, base / "class_names.txt")

    def split(name):
        try:
            x = np.fromfile(base / f"{name}_X.bin", np.uint8)
            y = np.fromfile(base / f"{name}_y.bin", np.uint8).astype(np.int32) - 1
            images = x.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)  # column-major planes -> (N, H, W, C)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {base}/{name}_X.bin ({type(e).__name__}); "
                            f"delete {base} and run again") from None
        if len(images) != len(y):
            raise DataError(f"{base}: {name}_X.bin has {len(images)} images but {name}_y.bin {len(y)} labels")
        return np.ascontiguousarray(images), y

    return two_splits(split("train"), split("test"))


CIFAR10 = Benchmark(
    "cifar10", CIFAR10_CLASSES, {"": ""},
    lambda d: (Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                      (CIFAR_DIR,), checksum="md5:c58f30108f718f92721af3b95e74349a"),),  # torchvision's md5
    _cifar, (32, 32, 3), SPLITS, "Krizhevsky 2009",
)
STL10 = Benchmark(
    "stl10", STL10_CLASSES, {"": ""},
    lambda d: (Remote("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "stl10_binary.tar.gz",
                      (STL_DIR,), checksum="md5:91f7769df0f17e558f3565bffb0c7dfb"),),
    _stl, (96, 96, 3), SPLITS, "Coates et al. 2011",
)


def nine_class_labels(dataset: str, class_names) -> np.ndarray:
    """``lut[k]``: the 9-class label of ``dataset``'s class k, or -1 where it is dropped."""
    rename = NINE_FROM[dataset]
    return np.asarray([-1 if rename[n] is None else NINE.index(rename[n]) for n in class_names], np.int64)
