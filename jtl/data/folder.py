"""Image folders ``root/<class>/*.jpg|jpeg|png``: classes are the sorted sub-directory names.

Images are decoded with PIL and converted to RGB (C=3); sizes may vary. A file PIL
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

from jtl.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png")


def scan(root: str, on_error: str = "raise") -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """``(class_names, files, labels)`` of the folder, files sorted within each class."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {root} does not exist; expected {root}/<class>/*.jpg|png")
    stamp = tuple((d.name, d.stat().st_mtime_ns) for d in sorted(path.iterdir()) if d.is_dir())
    return _scan(str(path), on_error, stamp)


@functools.lru_cache(maxsize=8)
def _scan(root: str, on_error: str, stamp: tuple) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    del stamp  # part of the cache key only: a changed folder is scanned again
    path = Path(root)
    classes, files, labels = [], [], []
    for d in sorted(p for p in path.iterdir() if p.is_dir()):
        found = sorted(str(f) for f in d.iterdir() if f.suffix.lower() in EXTENSIONS and f.is_file())
        good = [f for f in found if _opens(f, on_error)]
        if good:
            labels += [len(classes)] * len(good)
            classes.append(d.name)
            files += good
    if not files:
        raise DataError(f"image folder {root} has no {root}/<class>/*.jpg|png files")
    return tuple(classes), tuple(files), np.asarray(labels, np.int32)


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
        raise DataError(f"unreadable image {f} ({type(e).__name__}: {e}); fix or delete it, or pass on_error='skip'")
    warnings.warn(f"skipping unreadable image {f}: {type(e).__name__}: {e}", stacklevel=4)


class Reader:
    """``reader(i) -> uint8 (H, W, 3)`` for file i, or None for an unreadable file when skipping."""

    def __init__(self, files: tuple[str, ...], on_error: str):
        self.files, self.on_error = files, on_error
        self.bad: set[int] = set()

    def __call__(self, i: int) -> np.ndarray | None:
        if i in self.bad:
            return None
        try:
            with Image.open(self.files[i]) as im:
                return np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            _report(self.files[i], e, self.on_error)
            self.bad.add(i)
            return None
