"""Class identity by name: every dataset a run touches is mapped onto the run's class list.

A run's classes are the training set's class names (after ``data.classes``), in label
order; they are recorded in the run directory. An evaluation, target or prediction
dataset is relabelled by name: its example of class ``n`` gets label
``run_classes.index(n)``, whatever number its own folder or builder gave it. So an
evaluation folder that lacks a class, or has an empty class directory, keeps every
label attached to its name.

- A class that the dataset has and the run does not is an error naming it, unless
  ``data.classes`` left it out of the training set on purpose (``excluded``): such
  examples are dropped, as they were from the training set.
- A dataset with only some of the run's classes is fine (partial-set evaluation): its
  metrics count the classes present.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jtl.data.source import Info, Source
from jtl.errors import DataError


def _listed(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def label_map(dataset_classes: Sequence[str], run_classes: Sequence[str], excluded: Sequence[str] = (),
              what: str = "dataset") -> np.ndarray:
    """``lut[k]`` = run label of the dataset's class k, or -1 where that class is excluded."""
    dataset_classes, run_classes = list(dataset_classes), list(run_classes)
    if len(set(dataset_classes)) != len(dataset_classes):
        dup = sorted({n for n in dataset_classes if dataset_classes.count(n) > 1})
        raise DataError(f"{what} names classes twice ({_listed(dup)}); class names must be unique")
    position = {n: i for i, n in enumerate(run_classes)}
    unknown = [n for n in dataset_classes if n not in position and n not in set(excluded)]
    if unknown:
        raise DataError(
            f"{what} has classes the run does not know: {_listed(unknown)}; the run's classes are "
            f"{_listed(run_classes)} (labels are matched by class name; rename or remove those classes)")
    if not set(dataset_classes) & set(run_classes):
        raise DataError(f"{what} shares no class name with the run ({_listed(run_classes)})")
    return np.asarray([position.get(n, -1) for n in dataset_classes], np.int64)


def align(src: Source, run_classes: Sequence[str], excluded: Sequence[str] = ()) -> Source:
    """``src`` relabelled onto ``run_classes`` by name (examples of ``excluded`` classes dropped)."""
    run_classes = tuple(run_classes)
    lut = label_map(src.info.class_names, run_classes, excluded, f"{src.name}:{src.split}")
    labels = lut[src.labels] if len(src.labels) else np.zeros(0, np.int64)
    keep = np.flatnonzero(labels >= 0)
    out = src.subset(keep, labels[keep].astype(np.int32))
    out.info = Info(src.info.name, run_classes, src.info.image_shape, src.info.splits)
    if len(out) == 0:
        raise DataError(f"{src.name}:{src.split} has no example of the run's classes ({_listed(run_classes)})")
    return out


def present(labels: np.ndarray, num_classes: int) -> list[bool]:
    """Which of the run's classes have at least one example in ``labels``."""
    return (np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes] > 0).tolist()


@dataclasses.dataclass(frozen=True)
class RunClasses:
    """A run's class names (label order) and the training set's classes ``data.classes`` left out."""

    names: tuple[str, ...]
    excluded: tuple[str, ...] = ()

    def align(self, src: Source) -> Source:
        return align(src, self.names, self.excluded)

    def to_json(self) -> dict:
        return {"classes": list(self.names), "excluded_classes": list(self.excluded)}

    @classmethod
    def from_json(cls, d: dict) -> "RunClasses":
        return cls(tuple(d["classes"]), tuple(d.get("excluded_classes", ())))
