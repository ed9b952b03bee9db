"""``run.json``: the facts a run directory carries so that it can be used alone.

Written when a run starts (before the first step), next to ``config.json``::

    {"recipe": "train" | "linear_probe" | "adapt",
     "classes": [...],            # the run's class names, in label order
     "excluded_classes": [...],   # training-set classes that data.classes left out
     "normalization": {"mean": [...], "std": [...], "image_size": 32, "channels": 3},
     "model": {"name": ..., "num_classes": ...},
     "backbone": "backbone.npz",  # linear probes: the frozen backbone's variables
     "layout": "transfer"}        # parameters as jtl.models.transfer lays them out

``jtl eval``, ``jtl predict`` and :class:`jtl.train.inference.RunModel` read these and the
checkpoints; they never open the training data. A resumed run must have the same classes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax import traverse_util

from jtl.data.classes import RunClasses
from jtl.distributed import is_writer
from jtl.errors import JtlError
from jtl.train import runinfo
from jtl.train.layout import LAYOUT

RUN_FILE = "run.json"
BACKBONE_FILE = "backbone.npz"


def recipe_of(cfg) -> str:
    return "adapt" if cfg.adapt.target else cfg.recipe


def facts(cfg, classes: RunClasses, normalization: dict) -> dict:
    return {
        "recipe": recipe_of(cfg),
        **classes.to_json(),
        "normalization": {k: (list(map(float, v)) if k in ("mean", "std") else v) for k, v in normalization.items()},
        "model": {"name": cfg.model.name, "num_classes": cfg.model.num_classes},
        **({"backbone": BACKBONE_FILE} if recipe_of(cfg) == "linear_probe" else {}),
        "layout": LAYOUT,
    }


def write(workdir: str | os.PathLike, cfg, task) -> dict:
    """Record the run's facts (and a probe's backbone) before its first step; a resumed run keeps
    them, and one whose training set now has other classes is refused."""
    path = Path(workdir) / RUN_FILE
    new = facts(cfg, task.classes, task.normalization)
    if path.exists() and runinfo.has_started(workdir):  # the facts of a run are fixed when it takes its first step
        old = read(workdir)
        if old.get("classes") != new["classes"]:
            raise JtlError(f"{workdir} was trained on classes {old.get('classes')} but data.train now has "
                           f"{new['classes']}; restore the training data or use a fresh --workdir")
        return old
    if getattr(task, "backbone_variables", None) is not None:
        save_backbone(workdir, task.backbone_variables)
    runinfo.write_json(path, new)
    return new


def read(workdir: str | os.PathLike) -> dict:
    path = Path(workdir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise JtlError(f"{workdir} has no {RUN_FILE}: it was not started by this version of jtl, "
                       "or is not a run directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JtlError(f"{path} is unreadable ({type(e).__name__}); restore it from a copy") from None


def save_backbone(workdir: str | os.PathLike, variables: dict) -> None:
    """A linear probe's frozen backbone ``{"params", "batch_stats"}``, flattened into one npz."""
    if not is_writer():
        return
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
    path = Path(workdir) / BACKBONE_FILE
    tmp = path.with_name(f".{path.name}.tmp.npz")
    try:
        np.savez(tmp, **flat)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_backbone(workdir: str | os.PathLike) -> dict:
    path = Path(workdir) / BACKBONE_FILE
    try:
        with np.load(path) as z:
            flat = {tuple(k.split("/")): z[k] for k in z.files}
    except FileNotFoundError:
        raise JtlError(f"{path} is missing: the linear probe's backbone is stored there; rerun the probe") from None
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, ValueError, ...
        raise JtlError(f"{path} is damaged ({type(e).__name__}); rerun the probe in a fresh --workdir") from None
    tree = traverse_util.unflatten_dict(flat)
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}


def reconstruct(cfg) -> dict:
    """The facts of a run started before ``run.json`` existed, recomputed from its training data
    (the same class list and statistics the run computed, if that data has not changed)."""
    from jtl.train.tasks import load_source, normalization_of, run_classes, train_iterator  # noqa: PLC0415

    src = load_source(cfg, cfg.data.train, cfg.data.train_split, budget=True)
    it = train_iterator(cfg, src, None if cfg.data.normalize == "none" else cfg.data.normalize)
    return facts(cfg, run_classes(cfg, src), normalization_of(cfg, it))
