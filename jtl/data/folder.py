"""Image folders ``root/<class>/<image files>``: classes are the sorted sub-directory names.

Every sub-directory (but hidden ones) is a class, also one that holds no image: the class
list of a folder is its directory names, so labels stay attached to names
(:mod:`jtl.data.classes` maps other datasets onto a run's classes by name).

A *split folder* ``root/{train,val,test}/<class>/<image files>`` (its sub-directories are
split names only, ``train`` among them, and ``train`` holds class directories) keeps its
splits in directories (:func:`split_dirs`): its classes are the sorted union of the split
directories' class names (listed, no image opened), and each split is scanned on its own,
so reading ``train`` never opens a file of ``test``.

Images (``EXTENSIONS``) are decoded to RGB (C=3) by :func:`jtl.data.decode.decode_image`,
which decodes every mode faithfully or refuses it; sizes may vary. A file PIL
cannot open is found when the folder is scanned, one that fails later while decoding
when it is read; either way ``on_error="raise"`` raises a DataError naming the file and
``on_error="skip"`` warns with its path, drops it (scan) or serves the next readable
image of the split in its place (read).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from jtl.data.decode import decode_image
from jtl.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "val", "test")  # the directory names of a split folder


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _existing(root: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {root} does not exist; expected {root}/<class>/*.jpg|png "
                        f"(or {root}/train/<class>/*.jpg|png and {root}/test/<class>/...)")
    return path


def split_dirs(root: str) -> dict[str, Path] | None:
    """``{split: directory}`` of a split folder ``root/{train,val,test}/<class>/``; None for a plain
    folder (one whose class directories hold the images)."""
    path = _existing(root)
    dirs = {d.name: d for d in _subdirs(path)}
    if "train" in dirs and set(dirs) <= set(SPLIT_NAMES) and _subdirs(dirs["train"]):
        return dirs
    return None


def class_names(root: str) -> tuple[str, ...]:
    """The classes of folder ``root`` from its directory names alone (no image is opened): a split
    folder's are the sorted union over its split directories."""
    dirs = split_dirs(root)
    bases = dirs.values() if dirs else [_existing(root)]
    names = tuple(sorted({d.name for base in bases for d in _subdirs(base)}))
    if not names:
        raise DataError(f"image folder {root} has no class directories; expected {root}/<class>/*.jpg|png")
    return names


def scan(root: str, on_error: str = "raise", classes: tuple[str, ...] | None = None
         ) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """``(class_names, files, labels)`` of the folder, files sorted within each class. ``classes``
    (a split folder's class list) numbers the labels and may name directories this one lacks."""
    path = _existing(root)
    stamp = tuple((d.name, d.stat().st_mtime_ns) for d in sorted(path.iterdir()) if d.is_dir())
    return _scan(str(path), on_error, stamp, classes)


@functools.lru_cache(maxsize=8)
def _scan(root: str, on_error: str, stamp: tuple, classes: tuple[str, ...] | None
          ) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    del stamp  # part of the cache key only: a changed folder is scanned again
    path = Path(root)
    names = classes if classes is not None else tuple(d.name for d in _subdirs(path))
    files, labels = [], []
    for k, name in enumerate(names):
        d = path / name
        found = sorted(str(f) for f in d.iterdir() if f.suffix.lower() in EXTENSIONS and f.is_file()) \
            if d.is_dir() else []
        good = [f for f in found if _opens(f, on_error)]
        labels += [k] * len(good)  # a class directory without images is still a class
        files += good
    if not files:
        raise DataError(f"image folder {root} has no {root}/<class>/*.jpg|png files")
    return tuple(names), tuple(files), np.asarray(labels, np.int32)


def _opens(f: str, on_error: str) -> bool:
    try:
        with Image.open(f) as im:
            im.verify()
        return True
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        _report(f, e, on_error)
        return False


def _report(f: str, e: Exception, on_error: str) -> None:
    if on_error == "raise":
        raise DataError(f"unreadable image {f} ({type(e).__name__}: {e}); fix or delete it, or skip unreadable images with on_error='skip' "
                        "(jtl train: --config.data.on_error=skip; jtl data: -o on_error=skip)")
    warnings.warn(f"skipping unreadable image {f}: {type(e).__name__}: {e}", stacklevel=4)


class Reader:
    """``reader(i) -> uint8 (H, W, 3)`` for file i (:func:`jtl.data.decode.decode_image`), or None for an
    unreadable or refused file when skipping."""

    def __init__(self, files: tuple[str, ...], on_error: str):
        self.files, self.on_error = files, on_error
        self.bad: set[int] = set()

    def __call__(self, i: int) -> np.ndarray | None:
        if i in self.bad:
            return None
        try:
            return decode_image(self.files[i], 3)
        except Exception as e:  # noqa: BLE001 - DataError from decoding, or anything else reading the file
            _report(self.files[i], e, self.on_error)
            self.bad.add(i)
            return None
