"""What a benchmark declares, and how its standard layout is found or fetched.

A :class:`Benchmark` names its classes (the canonical label order), its domains, the
published files each domain needs (:class:`~jtl.data.benchmarks.download.Remote`) and a
reader that turns the standard layout under ``$JTL_DATA_DIR/<name>/`` into :class:`Parts`.
:func:`ensure` accepts a layout that is already there (nothing is downloaded) and
otherwise fetches and extracts what is missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jtl.data.benchmarks.download import Remote, extract, fetch
from jtl.errors import DataError


@dataclasses.dataclass
class Parts:
    """A domain as stored: ``items`` (image files, or uint8 images (N, H, W, C)), their
    canonical ``labels``, and the published splits as index arrays into them."""

    items: Sequence[Path] | np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A published dataset: ``domains`` maps a domain's name to its folder / list stem
    (``{"": ""}`` for a dataset of one domain); ``image_shape`` is None where sizes vary."""

    name: str
    classes: tuple[str, ...]
    domains: dict[str, str]
    remotes: Callable[[str], tuple[Remote, ...]]
    read: Callable[[Path, str], Parts]
    image_shape: tuple[int, int, int] | None
    splits: tuple[str, ...]
    citation: str
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)

    def domain(self, text: str, name: str) -> str:
        """The canonical domain of ``text`` (an alias allowed); a one-line error otherwise."""
        text = self.aliases.get(text, text)
        if text in self.domains:
            return text
        if list(self.domains) == [""]:
            raise DataError(f"{name!r}: {self.name} has no domains (and takes no shifts); write {self.name}")
        choices = ", ".join(f"{self.name}:{d}" for d in self.domains)
        raise DataError(f"{name!r}: unknown {self.name} domain {text!r}; use one of {choices}")


def ensure(bench: Benchmark, domain: str, data_dir: Path, download: bool = True) -> Path:
    """The dataset root ``data_dir/<name>`` with every file ``domain`` needs, fetched if missing."""
    root = data_dir / bench.name
    for remote in bench.remotes(domain):
        if all((root / p).exists() for p in remote.provides):
            continue
        if not remote.is_archive:
            fetch(remote, bench.name, root / remote.filename, download=download)
            continue
        archive = fetch(remote, bench.name, data_dir / "downloads" / bench.name / remote.filename, download=download)
        root.mkdir(parents=True, exist_ok=True)
        extract(archive, root, bench.name)
        missing = [p for p in remote.provides if not (root / p).exists()]
        if missing:
            raise DataError(f"{bench.name}: {archive} holds no {missing[0]}; it is not the published "
                            f"{remote.filename} (delete it and run again)")
        archive.unlink()  # the extracted files are the layout; the archive would double the disk used
    return root


def read_list(root: Path, list_file: str, classes: Sequence[str], prefix: str = "") -> tuple[list[Path], np.ndarray]:
    """An image list (``<path> <label>`` per line, paths relative to ``root/prefix``).

    The class of a line is its image's folder name; labels are re-numbered to the
    position of that name in ``classes``. A list whose number for a folder varies, or
    whose folder is not a published class, is refused (it is not the published list).
    """
    path = root / list_file
    if not path.is_file():
        raise DataError(f"image list {path} is missing; the dataset's layout is incomplete (delete {root} "
                        "and run again to download it)")
    position = {c: i for i, c in enumerate(classes)}
    files, labels, seen = [], [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel, _, number = line.strip().rpartition(" ")
        folder = Path(rel).parent.name
        if not rel or not number.lstrip("-").isdigit() or folder not in position:
            raise DataError(f"{path}:{n}: {line.strip()[:80]!r} is not '<class folder>/<image> <label>' "
                            f"with a published class")
        if seen.setdefault(int(number), folder) != folder:
            raise DataError(f"{path}:{n}: label {number} is {folder!r} here but {seen[int(number)]!r} before")
        files.append(root / prefix / rel)
        labels.append(position[folder])
    return files, np.asarray(labels, np.int32)


def concat(named: dict[str, tuple[list[Path], np.ndarray]]) -> Parts:
    """Several published lists as one :class:`Parts`, each list a split."""
    items, labels, splits, start = [], [], {}, 0
    for split, (files, lab) in named.items():
        items += files
        labels.append(lab)
        splits[split] = np.arange(start, start + len(files))
        start += len(files)
    return Parts(items, np.concatenate(labels).astype(np.int32), splits)
