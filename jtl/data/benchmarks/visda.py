"""VisDA-2017 classification (Peng et al., "VisDA: The Visual Domain Adaptation Challenge",
arXiv:1710.06924): 12 classes; ``synthetic`` = the challenge's ``train`` folder (152,397
renderings of 3D models), ``real`` = its ``validation`` folder (55,388 COCO crops).

Files: the challenge's own archives (devkit ``VisionLearningGroup/taskcv-2017-public``,
``classification/data``): ``http://csr.bu.edu/ftp/visda17/clf/train.tar`` and
``validation.tar``, each holding ``<folder>/image_list.txt`` (``<class>/<file> <label>``,
relative to the folder) and ``<folder>/<class>/*``. No checksum is published. Layout::

    visda2017/train/image_list.txt        visda2017/train/<class>/*.png
    visda2017/validation/image_list.txt   visda2017/validation/<class>/*.jpg

Names: ``visda2017:synthetic`` (alias ``visda2017:train``), ``visda2017:real`` (alias
``visda2017:validation``). Splits as for Office-31: ``train`` = ``test`` = ``all``.
"""

from __future__ import annotations

import numpy as np

from jtl.data.benchmarks.base import Benchmark, Parts, read_list
from jtl.data.benchmarks.download import Remote

CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
           "skateboard", "train", "truck")
DOMAINS = {"synthetic": "train", "real": "validation"}
URL = "http://csr.bu.edu/ftp/visda17/clf/{}.tar"


def _read(root, domain) -> Parts:
    folder = DOMAINS[domain]
    files, labels = read_list(root, f"{folder}/image_list.txt", CLASSES, prefix=folder)
    return Parts(files, labels, {"all": np.arange(len(files))})


VISDA2017 = Benchmark(
    name="visda2017",
    classes=CLASSES,
    domains=DOMAINS,
    remotes=lambda d: (Remote(URL.format(DOMAINS[d]), f"{DOMAINS[d]}.tar", (f"{DOMAINS[d]}/image_list.txt",),
                              note="the VisDA-2017 devkit publishes no checksum"),),
    read=_read,
    image_shape=None,
    splits=("train", "test", "all"),
    citation="Peng et al. 2017",
    aliases={"train": "synthetic", "validation": "real"},
)
