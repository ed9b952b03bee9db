"""PACS (Li et al., "Deeper, Broader and Artier Domain Generalization", ICCV 2017):
9,991 images, 7 classes, domains ``art_painting`` (2,048), ``cartoon`` (2,344), ``photo``
(1,670), ``sketch`` (3,929), with the authors' train / validation (``crossval``) lists.

Files and layout are TLlib's (``tllib/vision/datasets/pacs.py``): ``image_list.zip``
holds ``image_list/<domain>_{train,val,all}.txt`` (``<domain>/<class>/<file> <label>``,
labels 1..7) and ``<domain>.tgz`` the images::

    pacs/image_list/photo_train.txt   pacs/photo/<class>/*.jpg

No checksum is published (TLlib's nor the authors' Google Drive copy). Splits: ``train``
and ``val`` (the authors' lists), ``test`` = ``all`` (domain generalisation tests on the
whole held-out domain). Names: ``pacs:photo`` etc.; ``A``, ``C``, ``P``, ``S`` are aliases.
"""

from __future__ import annotations

import numpy as np

from jtl.data.benchmarks.base import Benchmark, Parts, read_list
from jtl.data.benchmarks.download import Remote
from jtl.data.benchmarks.office import NO_CHECKSUM, TLLIB
from jtl.errors import DataError

CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
FILES = {
    "image_list": "603a1fea81f2415ab7e0", "art_painting": "46684292e979402b8d87",
    "cartoon": "7bfa413b34ec4f4fa384", "photo": "45f71386a668475d8b42", "sketch": "4ba559535e4b4b6981e5",
}
DOMAINS = {d: d for d in ("art_painting", "cartoon", "photo", "sketch")}


def _remotes(domain: str) -> tuple[Remote, ...]:
    lists = tuple(f"image_list/{domain}_{s}.txt" for s in ("train", "val", "all"))
    return (
        Remote(TLLIB.format(FILES["image_list"]), "image_list.zip", lists, note=NO_CHECKSUM),
        Remote(TLLIB.format(FILES[domain]), f"{domain}.tgz", (domain,), note=NO_CHECKSUM),
    )


def _read(root, domain) -> Parts:
    """The ``all`` list stored once; ``train`` and ``val`` as positions in it."""
    files, labels = read_list(root, f"image_list/{domain}_all.txt", CLASSES)
    position = {f: i for i, f in enumerate(files)}
    splits = {"all": np.arange(len(files))}
    for split in ("train", "val"):
        part, _ = read_list(root, f"image_list/{domain}_{split}.txt", CLASSES)
        stray = [f for f in part if f not in position]
        if stray:
            raise DataError(f"{root}/image_list/{domain}_{split}.txt names {stray[0]}, which "
                            f"{domain}_all.txt lacks; the lists are not the published ones")
        splits[split] = np.asarray([position[f] for f in part], np.int64)
    return Parts(files, labels, splits)


PACS = Benchmark(
    name="pacs",
    classes=CLASSES,
    domains=DOMAINS,
    remotes=_remotes,
    read=_read,
    image_shape=None,
    splits=("train", "val", "test", "all"),
    citation="Li et al. 2017, via TLlib",
    aliases={"A": "art_painting", "C": "cartoon", "P": "photo", "S": "sketch"},
)
