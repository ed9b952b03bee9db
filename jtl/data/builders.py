"""TFDS builders that need no TensorFlow: array_record files of uint8 ``Tensor`` images.

- :class:`FashionMnist` (``jtl_fashion_mnist``): the Debian package's IDX files when
  present (``$JTL_FASHION_MNIST_DIR``, default ``/usr/share/datasets/fashion-mnist``),
  else TFDS's own download URLs (sha256-checked against TFDS's registry).
- :class:`Digits` (``jtl_digits``): scikit-learn's 1,797 8x8 digits, scaled
  ``round(v * 255 / 16)`` to uint8, in one split ``full``.
- :class:`Shifted` (``jtl_shifted``): a domain shift of a base dataset, one
  :class:`ShiftConfig` per (base, shifts, seed, backgrounds), in one split ``pool``
  that holds the shifted images of the base's held-out split with their base index.

Everything is written under :func:`data_dir` and read back with ``as_data_source``
(what ``tfds.data_source`` returns).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from jtl.data import shifts as shifts_lib
from jtl.errors import DataError

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_READ_CHUNK = 4096


def cache_root() -> Path:
    """``$JTL_CACHE``, default ``~/.cache/jtl``."""
    return Path(os.environ.get("JTL_CACHE") or Path.home() / ".cache" / "jtl")


def data_dir() -> Path:
    """Where prepared datasets live: ``$JTL_DATA_DIR``, default ``<cache root>/data``."""
    return Path(os.environ.get("JTL_DATA_DIR") or cache_root() / "data")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip): ubyte images (N, H, W) or labels (N,)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated .gz; zlib.error: damaged data
        raise DataError(f"cannot read IDX file {path} ({type(e).__name__}: {e}); re-download or reinstall it") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (2049, 2051):
        raise DataError(f"{path} is not an IDX ubyte file (magic {magic}); re-download it")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} bytes); re-download it")
    return data.reshape(shape)


def _features(shape, class_names, with_index=False):
    feats = {
        "image": tfds.features.Tensor(shape=tuple(shape), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(class_names)),
    }
    if with_index:
        feats["index"] = tfds.features.Scalar(dtype=np.int64)
    return tfds.features.FeaturesDict(feats)


def _examples(images, labels, index=None):
    for i in range(len(images)):
        ex = {"image": images[i], "label": int(labels[i])}
        if index is not None:
            ex["index"] = int(index[i])
        yield i, ex


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """No source-code path: tfds would look for a checksums file next to it (needs importlib_resources)."""

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        return None


class FashionMnist(_Builder, skip_registration=True):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train and 10,000 test 28x28x1 images, 10 classes."""

    name = "jtl_fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")
    held_out_split = "test"

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST as uint8 tensors.",
            features=_features((28, 28, 1), FASHION_MNIST_CLASSES),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        files = fashion_mnist_files(dl_manager)
        return {
            split: self._generate_examples(files[f"{split}_images"], files[f"{split}_labels"])
            for split in ("train", "test")
        }

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise DataError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels")
        yield from _examples(images[..., None], labels)


def fashion_mnist_files(dl_manager=None) -> dict[str, str]:
    """Local Debian files if all four exist, else TFDS's download (sha256-checked)."""
    local = Path(os.environ.get("JTL_FASHION_MNIST_DIR") or FASHION_MNIST_DEBIAN_DIR)
    files = {k: local / v for k, v in FASHION_MNIST_FILES.items()}
    if all(f.is_file() for f in files.values()):
        return {k: str(v) for k, v in files.items()}
    hint = f"install the Debian package dataset-fashion-mnist (files in {local}) or set JTL_FASHION_MNIST_DIR"
    if dl_manager is None:
        raise DataError(f"fashion_mnist: no files in {local}; {hint}")
    from tensorflow_datasets.image_classification.mnist import FashionMNIST

    urls = {k: FashionMNIST.URL + v for k, v in FASHION_MNIST_FILES.items()}
    try:
        paths = dl_manager.download(urls)
    except Exception as e:  # noqa: BLE001 - any network failure means the same to the user
        raise DataError(f"fashion_mnist: no files in {local} and download failed ({type(e).__name__}); {hint}") from None
    known = _tfds_sha256("fashion_mnist")
    for k, p in paths.items():
        want = known.get(urls[k])
        if want and hashlib.sha256(Path(p).read_bytes()).hexdigest() != want:
            raise DataError(f"fashion_mnist: {p} has the wrong sha256; delete it and retry")
    return {k: str(v) for k, v in paths.items()}


def _tfds_sha256(name: str) -> dict[str, str]:
    path = Path(tfds.__file__).parent / "url_checksums" / f"{name}.txt"
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                out[parts[0]] = parts[2]
    return out


class Digits(_Builder, skip_registration=True):
    """scikit-learn's digits (UCI optical digits): 1,797 8x8x1 images, 10 classes, one split."""

    name = "jtl_digits"
    VERSION = tfds.core.Version("1.0.0")
    held_out_split = None  # held-out images are chosen per seed, see jtl.data.sources

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn digits scaled to uint8 (round(v * 255 / 16)).",
            features=_features((8, 8, 1), [str(i) for i in range(10)]),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"full": self._generate_examples()}

    def _generate_examples(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        yield from _examples(images, d.target)


BASES = {"fashion_mnist": FashionMnist, "digits": Digits}


@dataclasses.dataclass(eq=False)
class ShiftConfig(tfds.core.BuilderConfig):
    """A shifted copy of ``base``: ``shifts`` applied with ``seed``, backgrounds from ``backgrounds``."""

    base: str = "fashion_mnist"
    shifts: tuple = ()
    seed: int = 0
    backgrounds: str | None = None


def shift_config(base: str, shifts: tuple, seed: int, backgrounds: str | None = None) -> ShiftConfig:
    """Config named ``<base>.<shift>_<shift>.s<seed>[.bg<digest>]`` (a directory name)."""
    parts = "_".join(s.kind + ("" if s.param is None else str(s.param)) for s in shifts)
    name = f"{base}.{parts}.s{seed}"
    if backgrounds is not None and any(s.kind == "mnistm" for s in shifts):
        name += ".bg" + shifts_lib.backgrounds_digest(shifts_lib.load_backgrounds(backgrounds))
    return ShiftConfig(
        name=name, version="1.0.0", base=base, shifts=tuple(shifts), seed=seed, backgrounds=backgrounds,
        description=f"{base}:{'+'.join(map(str, shifts))}#{seed}",
    )


class Shifted(_Builder, skip_registration=True):
    """A base dataset's held-out images under a shift; split ``pool``, with the base ``index``."""

    name = "jtl_shifted"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        cfg = self.builder_config
        base = BASES[cfg.base]
        shape = shifts_lib.output_shape(base_shape(cfg.base), cfg.shifts)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Domain shift {cfg.description}",
            features=_features(shape, class_names(base), with_index=True),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"pool": self._generate_examples()}

    def _generate_examples(self):
        cfg = self.builder_config
        base_cls = BASES[cfg.base]
        split = base_cls.held_out_split or "full"
        images, labels = read_arrays(prepared(base_cls), split)
        bgs = shifts_lib.load_backgrounds(cfg.backgrounds) if any(s.kind == "mnistm" for s in cfg.shifts) else None
        shifted = shifts_lib.apply(images, cfg.shifts, cfg.seed, bgs)
        yield from _examples(shifted, labels, np.arange(len(images)))


def base_shape(base: str) -> tuple[int, int, int]:
    return {"fashion_mnist": (28, 28, 1), "digits": (8, 8, 1)}[base]


def class_names(builder_cls) -> tuple[str, ...]:
    return FASHION_MNIST_CLASSES if builder_cls is FashionMnist else tuple(str(i) for i in range(10))


@contextlib.contextmanager
def _quiet():
    import logging

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    from tensorflow_datasets.core.utils import tqdm_utils

    active = tqdm_utils._active  # noqa: SLF001 - tfds has no getter; restore what the user had
    tqdm_utils.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # tfds prints "Downloading and preparing ..."
            yield
    finally:
        tqdm_utils.display_progress_bar(active)
        logger.setLevel(level)


def prepared(builder_cls, config: ShiftConfig | None = None) -> tfds.core.DatasetBuilder:
    """The builder, prepared under :func:`data_dir` (built on first use)."""
    kwargs = {"config": config} if config is not None else {}
    where = data_dir() / builder_cls.name / (config.name if config is not None else "")
    try:
        with _quiet():
            builder = builder_cls(data_dir=str(data_dir()), file_format="array_record", **kwargs)
            if not builder.is_prepared():
                with _prepare_lock(builder_cls.name):  # processes of one run (or a sweep) share data_dir()
                    builder = builder_cls(data_dir=str(data_dir()), file_format="array_record", **kwargs)
                    if not builder.is_prepared():  # unless another process prepared it meanwhile
                        builder.download_and_prepare()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - tfds raises many types for a damaged dataset_info.json etc.
        raise _damaged(where, e) from None
    return builder


@contextlib.contextmanager
def _prepare_lock(name: str):
    """One process at a time prepares a dataset (an exclusive lock on a file beside it)."""
    import fcntl  # noqa: PLC0415

    data_dir().mkdir(parents=True, exist_ok=True)
    with open(data_dir() / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _damaged(where, e: Exception, files=()) -> DataError:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    named = ", ".join(str(f) for f in files) or str(where)
    return DataError(f"prepared dataset files {named} are damaged ({type(e).__name__}: {first}); "
                     f"delete {where} and jtl prepares them again")


def read_arrays(builder: tfds.core.DatasetBuilder, split: str, with_index: bool = False):
    """All of ``split`` in memory via ``builder.as_data_source``: images (N,H,W,C) uint8, labels (N,) int32."""
    key = (builder.data_dir, split, with_index)
    hit = _ARRAYS.get(key)
    if hit is not None:
        return hit
    try:
        src = builder.as_data_source(split=split)
        n = len(src)
        first = src[0]
        images = np.empty((n, *np.shape(first["image"])), np.uint8)
        labels = np.empty((n,), np.int32)
        index = np.empty((n,), np.int64) if with_index else None
        for start in range(0, n, _READ_CHUNK):
            chunk = src.__getitems__(list(range(start, min(n, start + _READ_CHUNK))))
            images[start : start + len(chunk)] = np.stack([e["image"] for e in chunk])
            labels[start : start + len(chunk)] = [e["label"] for e in chunk]
            if with_index:
                index[start : start + len(chunk)] = [e["index"] for e in chunk]
    except Exception as e:  # noqa: BLE001 - array_record raises RuntimeError with Riegeli's words
        files = sorted(Path(builder.data_dir).glob(f"*-{split}.array_record*"))
        raise _damaged(builder.data_dir, e, files) from None
    out = (images, labels, index) if with_index else (images, labels)
    if len(_ARRAYS) > 16:
        _ARRAYS.clear()
    _ARRAYS[key] = out
    return out


_ARRAYS: dict = {}
