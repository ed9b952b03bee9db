"""Random-access sources: ``len(src)``, ``src[i] -> {"image": uint8 (H, W, C), "label": int32}``."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from jtl.errors import DataError


@dataclasses.dataclass(frozen=True)
class Info:
    """What a model needs to know: class names and image shape (None where sizes vary)."""

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, int | None, int]
    splits: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.image_shape[2]


class Source:
    """A split of a dataset, as a grain random-access data source.

    ``images`` is either a uint8 array (N_base, H, W, C) held in memory or a function
    ``base_index -> uint8 (H, W, C) | None`` (None: unreadable, skipped). ``index`` maps
    positions to base indices; ``labels`` are the (possibly relabelled) int32 labels.
    """

    def __init__(
        self,
        name: str,
        split: str,
        info: Info,
        images: np.ndarray | Callable[[int], np.ndarray | None],
        index: np.ndarray,
        labels: np.ndarray,
    ):
        self.name, self.split, self.info = name, split, info
        self._images = images
        self.index = np.asarray(index, np.int64)
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def files(self) -> tuple[str, ...] | None:
        """Image file of each example (image folders), else None."""
        files = getattr(self._images, "files", None)
        return None if files is None else tuple(files[i] for i in self.index)

    def __repr__(self) -> str:
        return f"Source({self.name!r}, split={self.split!r}, n={len(self)}, shape={self.info.image_shape})"

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {self!r}")
        return {"image": self._image(i % len(self)), "label": self.labels[i]}

    def _image(self, i: int) -> np.ndarray:
        if isinstance(self._images, np.ndarray):
            return self._images[self.index[i]]
        for k in range(len(self)):  # unreadable files are replaced by the next readable one
            img = self._images(int(self.index[(i + k) % len(self)]))
            if img is not None:
                return img
        raise DataError(f"{self.name}: no readable image in split {self.split!r}")

    def getitems(self, positions: Sequence[int]) -> dict:
        """Batched read: ``{"image": uint8 (B, H, W, C) or list of arrays, "label": int32 (B,)}``."""
        positions = np.asarray(positions, np.int64)
        labels = self.labels[positions]
        if isinstance(self._images, np.ndarray):
            return {"image": self._images[self.index[positions]], "label": labels}
        images = [self._image(int(p)) for p in positions]
        if len({im.shape for im in images}) == 1:
            images = np.stack(images)
        return {"image": images, "label": labels}

    def subset(self, positions: np.ndarray, labels: np.ndarray | None = None, split: str | None = None) -> "Source":
        """The examples at ``positions`` (with new ``labels`` if given)."""
        positions = np.asarray(positions, np.int64)
        return Source(
            self.name,
            split or self.split,
            self.info,
            self._images,
            self.index[positions],
            self.labels[positions] if labels is None else labels,
        )

