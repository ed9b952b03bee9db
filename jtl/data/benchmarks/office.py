"""Office-31 and Office-Home, as Transfer-Learning-Library (TLlib) distributes them.

- Office-31 (Saenko et al., "Adapting Visual Category Models to New Domains", ECCV 2010):
  4,110 images, 31 classes, domains ``A`` amazon (2,817), ``D`` dslr (498), ``W`` webcam (795).
- Office-Home (Venkateswara et al., "Deep Hashing Network for Unsupervised Domain
  Adaptation", CVPR 2017): 15,588 images, 65 classes, domains ``Ar`` Art (2,427),
  ``Cl`` Clipart (4,365), ``Pr`` Product (4,439), ``Rw`` Real_World (4,357).

Files and layout are TLlib's (``tllib/vision/datasets/office31.py``, ``officehome.py``):
``image_list.zip`` holds ``image_list/<domain>.txt`` (``<path> <label>`` per line, paths
relative to the root) and ``<domain>.tgz`` the images::

    office31/image_list/amazon.txt       office31/amazon/images/<class>/*.jpg
    office_home/image_list/Art.txt       office_home/Art/<class>/*.jpg

TLlib publishes no checksums for these files (nor do the datasets' authors, whose copies
are on Google Drive), so none is checked. Splits: the UDA protocol trains on the whole
source and the whole (unlabelled) target domain and tests on the whole target domain, so
``train`` = ``test`` = ``all``; ``test_fraction`` / ``val_fraction`` hold parts out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jtl.data.benchmarks.base import Benchmark, Parts, read_list
from jtl.data.benchmarks.download import Remote

NO_CHECKSUM = "TLlib publishes no checksum"
TLLIB = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"

OFFICE31_CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
    "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
    "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)
OFFICE31_DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
OFFICE31_FILES = {
    "image_list": "2c1dd9fbcaa9455aa4ad", "amazon": "ec12dfcddade43ab8101",
    "dslr": "a41d818ae2f34da7bb32", "webcam": "8a41009a166e4131adcd",
}

# TLlib's order (tllib/vision/datasets/officehome.py): the canonical label order here too.
OFFICE_HOME_CLASSES = (
    "Drill", "Exit_Sign", "Bottle", "Glasses", "Computer", "File_Cabinet", "Shelf", "Toys", "Sink",
    "Laptop", "Kettle", "Folder", "Keyboard", "Flipflops", "Pencil", "Bed", "Hammer", "ToothBrush", "Couch",
    "Bike", "Postit_Notes", "Mug", "Webcam", "Desk_Lamp", "Telephone", "Helmet", "Mouse", "Pen", "Monitor",
    "Mop", "Sneakers", "Notebook", "Backpack", "Alarm_Clock", "Push_Pin", "Paper_Clip", "Batteries", "Radio",
    "Fan", "Ruler", "Pan", "Screwdriver", "Trash_Can", "Printer", "Speaker", "Eraser", "Bucket", "Chair",
    "Calendar", "Calculator", "Flowers", "Lamp_Shade", "Spoon", "Candles", "Clipboards", "Scissors", "TV",
    "Curtains", "Fork", "Soda", "Table", "Knives", "Oven", "Refrigerator", "Marker",
)
OFFICE_HOME_DOMAINS = {"Ar": "Art", "Cl": "Clipart", "Pr": "Product", "Rw": "Real_World"}
OFFICE_HOME_FILES = {
    "image_list": "1b0171a188944313b1f5", "Art": "6a006656b9a14567ade2", "Clipart": "ae88aa31d2d7411dad79",
    "Product": "f219b0ff35e142b3ab48", "Real_World": "6c19f3f15bb24ed3951a",
}


def tllib_remotes(files: dict[str, str], folder: str, lists: tuple[str, ...]) -> tuple[Remote, ...]:
    """TLlib's ``image_list.zip`` (providing ``lists``) and ``<folder>.tgz``."""
    return (
        Remote(TLLIB.format(files["image_list"]), "image_list.zip", lists, note=NO_CHECKSUM),
        Remote(TLLIB.format(files[folder]), f"{folder}.tgz", (folder,), note=NO_CHECKSUM),
    )


def whole_domain(root: Path, list_file: str, classes) -> Parts:
    files, labels = read_list(root, list_file, classes)
    return Parts(files, labels, {"all": np.arange(len(files))})


OFFICE31 = Benchmark(
    name="office31",
    classes=OFFICE31_CLASSES,
    domains=OFFICE31_DOMAINS,
    remotes=lambda d: tllib_remotes(OFFICE31_FILES, OFFICE31_DOMAINS[d], (f"image_list/{OFFICE31_DOMAINS[d]}.txt",)),
    read=lambda root, d: whole_domain(root, f"image_list/{OFFICE31_DOMAINS[d]}.txt", OFFICE31_CLASSES),
    image_shape=None,
    splits=("train", "test", "all"),
    citation="Saenko et al. 2010, via TLlib",
)

OFFICE_HOME = Benchmark(
    name="office_home",
    classes=OFFICE_HOME_CLASSES,
    domains=OFFICE_HOME_DOMAINS,
    remotes=lambda d: tllib_remotes(
        OFFICE_HOME_FILES, OFFICE_HOME_DOMAINS[d], (f"image_list/{OFFICE_HOME_DOMAINS[d]}.txt",)),
    read=lambda root, d: whole_domain(root, f"image_list/{OFFICE_HOME_DOMAINS[d]}.txt", OFFICE_HOME_CLASSES),
    image_shape=None,
    splits=("train", "test", "all"),
    citation="Venkateswara et al. 2017, via TLlib",
)
