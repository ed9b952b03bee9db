"""Your own domains: unsupervised domain adaptation from a labelled source image folder to a
target image folder, every method of jtl.methods, with the protocol of configs/da_common.py.

ARG = ``METHOD,source=SRC,target=TGT[,OPTION=VALUE...]``::

    jtl train --config configs/da_folder.py:source_only,source=/data/photos,target=/data/sketches --workdir runs/own1/source_only
    jtl train --config configs/da_folder.py:dann,source=/data/photos,target=/data/sketches,init=runs/own1/source_only --workdir runs/own1/dann
    jtl eval --workdir runs/own1/dann --split target_test        # the final evaluation, on the held-out test images
    jtl da-results --config configs/da_folder.py:source=/data/photos,target=/data/sketches --methods all --seeds 0,1,2 --workdir runs/own --out runs/own/results.md

- ``SRC``: ``SRC/<class>/*.jpg`` (labelled; 10% held out as ``source_val``, seeded), or a split
  folder ``SRC/train/<class>/...`` (+ ``SRC/val/`` if you have one).
- ``TGT``: a split folder ``TGT/train/<class>/*.jpg`` (adapted on: every image; their labels
  are never used) and ``TGT/test/<class>/*.jpg`` (the labelled test images, read only by the
  final evaluation); ``TGT/val/`` optional. A plain folder ``TGT/<class>/`` works with
  ``test_fraction=0.3`` (a seeded, stratified 30% held out as test).
- Options: ``select=train|val`` (the split model selection scores: ``target_select``; default
  ``train``), ``test=NAME:SPLIT`` (the test set from elsewhere, e.g. ``folder:/data/sketch_test:all``),
  ``test_fraction``, ``val_fraction`` (of the target), ``size`` (pixels, default 32), ``steps``
  (default 1000), ``batch`` (default 32), ``init=DIR`` and ``seeds=0:1:2`` (as every configs/da_*.py).

Class names are matched by directory name; the classes are the source's. A path holding a
comma cannot be given here (write a config file that calls ``da_config``).
"""

from da_common import da_args, da_config, da_sweep

from jtl.errors import ConfigError

OWN = {"source": "", "target": "", "select": "train", "test": "test", "test_fraction": "0", "val_fraction": "0",
       "size": "32", "steps": "1000", "batch": "32"}


def _args(arg):
    opts = da_args(arg, **OWN)
    if not opts["source"] or not opts["target"]:
        raise ConfigError(f"configs/da_folder.py:{arg or ''}: give source=SRC,target=TGT "
                          "(image folders; see the file's docstring)")
    return opts


def get_config(arg=None):
    from jtl.data import info  # noqa: PLC0415 - the class count is the source's

    opts = _args(arg)
    source, target = f"folder:{opts['source']}", f"folder:{opts['target']}"
    c = da_config(opts, source=source, target=target, num_classes=info(source).num_classes,
                  image_size=int(opts["size"]), steps=int(opts["steps"]), batch_size=int(opts["batch"]),
                  select_split=opts["select"], test_split=opts["test"], held_out_test=True)
    c.adapt.target_test_fraction = float(opts["test_fraction"])
    c.adapt.target_val_fraction = float(opts["val_fraction"])
    return c


def get_sweep(arg=None):
    return da_sweep(_args(arg))
