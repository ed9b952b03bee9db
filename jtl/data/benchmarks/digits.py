"""Digit benchmarks: MNIST, USPS, SVHN, MNIST-M. Classes are ``"0"`` .. ``"9"`` in all four
(and in jtl's built-in ``digits``), so any pair is matched by name.

- MNIST (LeCun et al. 1998): 60,000 / 10,000 28x28x1; the four IDX ``.gz`` files with the
  md5s torchvision publishes (``torchvision/datasets/mnist.py``), from
  ``http://yann.lecun.com/exdb/mnist/`` or torchvision's mirror
  ``https://ossci-datasets.s3.amazonaws.com/mnist/``; read compressed where they lie.
- USPS (Hull 1994): 7,291 / 2,007 16x16x1; LIBSVM's ``usps.bz2`` / ``usps.t.bz2`` with
  torchvision's md5s. Lines ``<label 1..10> <i>:<v> ...`` with v in [-1, 1]; pixels
  ``uint8((v + 1) / 2 * 255)`` (truncated, as torchvision does), label - 1.
- SVHN (Netzer et al. 2011), cropped digits: 73,257 / 26,032 32x32x3; ``train_32x32.mat``
  and ``test_32x32.mat`` (MATLAB v5: ``X`` (32, 32, 3, N), ``y`` (N, 1) with 10 for the
  digit 0) with torchvision's md5s; ``extra`` is not used.
- MNIST-M (Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML
  2015): 59,001 / 9,001 28x28x3; the authors' ``mnist_m.tar.gz`` (Google Drive; no checksum
  published), holding ``mnist_m/mnist_m_{train,test}/*.png`` and
  ``mnist_m/mnist_m_{train,test}_labels.txt`` (``<file> <label>`` per line). Google Drive
  may answer with a confirmation page: then download it in a browser and put it where the
  error line says.

Layout: the files as published under ``$JTL_DATA_DIR/<name>/`` (MNIST-M: extracted).
"""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np

from jtl.data.benchmarks.base import Benchmark, Parts
from jtl.data.benchmarks.download import Remote
from jtl.data.builders import read_idx
from jtl.data.decode import decode_image
from jtl.errors import DataError

CLASSES = tuple(str(i) for i in range(10))
ONE = {"": ""}
SPLITS = ("train", "test", "all")

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {  # torchvision/datasets/mnist.py
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
USPS_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
USPS_FILES = {"usps.bz2": "ec16c51db3855ca6c91edd34d0e9b197", "usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118"}
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}
MNISTM_URL = "https://drive.google.com/uc?export=download&id=0B_tExHiYS-0veklUZHFYT19KYjg"


def _files(url: str, files: dict[str, str], mirrors=()) -> tuple[Remote, ...]:
    return tuple(Remote(url + f, f, (f,), checksum=f"md5:{md5}", mirrors=tuple(m + f for m in mirrors))
                 for f, md5 in files.items())


def two_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Parts:
    """Official train and test arrays as one stored domain."""
    n = len(train[0])
    return Parts(np.concatenate([train[0], test[0]]), np.concatenate([train[1], test[1]]).astype(np.int32),
                 {"train": np.arange(n), "test": np.arange(n, n + len(test[0]))})


def _mnist(root: Path, _domain) -> Parts:
    def split(prefix):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[..., None]
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise DataError(f"{root}: {prefix} has {len(images)} images but {len(labels)} labels; re-download it")
        return images, labels

    return two_splits(split("train"), split("t10k"))


def read_usps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A LIBSVM USPS file: (N, 16, 16, 1) uint8 images, labels 0..9."""
    try:
        with bz2.open(path, "rt") as f:
            lines = [line.split() for line in f if line.strip()]
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}); delete it and run again") from None
    values = np.zeros((len(lines), 256), np.float32)
    labels = np.empty(len(lines), np.int32)
    try:
        for n, (label, *pairs) in enumerate(lines):
            labels[n] = int(float(label)) - 1
            for pair in pairs:
                i, _, v = pair.partition(":")
                values[n, int(i) - 1] = float(v)
    except (ValueError, IndexError):
        raise DataError(f"{path}:{n + 1} is not a LIBSVM line '<label> <index>:<value> ...'") from None
    images = ((values + 1) / 2 * 255).astype(np.uint8)
    return images.reshape(-1, 16, 16, 1), labels


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A cropped-digits ``.mat`` file: (N, 32, 32, 3) uint8 images, labels 0..9 (10 -> 0)."""
    from scipy.io import loadmat  # noqa: PLC0415

    try:
        mat = loadmat(path)
        images, labels = np.transpose(mat["X"], (3, 0, 1, 2)), mat["y"].reshape(-1).astype(np.int32)
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError, TypeError, KeyError... for a bad file
        raise DataError(f"cannot read {path} ({type(e).__name__}); delete it and run again to download it") from None
    return np.ascontiguousarray(images, np.uint8), np.where(labels == 10, 0, labels)


def _mnistm(root: Path, _domain) -> Parts:
    def split(name):
        listing = root / "mnist_m" / f"mnist_m_{name}_labels.txt"
        if not listing.is_file():
            raise DataError(f"{listing} is missing; the layout is incomplete (delete {root} and run again)")
        rows = [line.split() for line in listing.read_text().splitlines() if line.strip()]
        images = [decode_image(root / "mnist_m" / f"mnist_m_{name}" / f, 3) for f, _ in rows]
        odd = next((f for (f, _), im in zip(rows, images) if im.shape != (28, 28, 3)), None)
        if odd is not None or not rows:
            raise DataError(f"{listing}: {odd or 'no images'} is not a 28x28 MNIST-M image; restore the layout")
        return np.stack(images), np.asarray([int(y) for _, y in rows], np.int32)

    return two_splits(split("train"), split("test"))


MNIST = Benchmark("mnist", CLASSES, ONE, lambda d: _files(MNIST_URL, MNIST_FILES, (MNIST_MIRROR,)), _mnist,
                  (28, 28, 1), SPLITS, "LeCun et al. 1998")
USPS = Benchmark("usps", CLASSES, ONE, lambda d: _files(USPS_URL, USPS_FILES),
                 lambda root, d: two_splits(read_usps(root / "usps.bz2"), read_usps(root / "usps.t.bz2")),
                 (16, 16, 1), SPLITS, "Hull 1994")
SVHN = Benchmark("svhn", CLASSES, ONE, lambda d: _files(SVHN_URL, SVHN_FILES),
                 lambda root, d: two_splits(read_svhn(root / "train_32x32.mat"), read_svhn(root / "test_32x32.mat")),
                 (32, 32, 3), SPLITS, "Netzer et al. 2011")
MNISTM = Benchmark(
    "mnistm", CLASSES, ONE,
    lambda d: (Remote(MNISTM_URL, "mnist_m.tar.gz",
                      ("mnist_m/mnist_m_train_labels.txt", "mnist_m/mnist_m_test_labels.txt"),
                      note="the authors publish no checksum"),),
    _mnistm, (28, 28, 3), SPLITS, "Ganin & Lempitsky 2015",
)
