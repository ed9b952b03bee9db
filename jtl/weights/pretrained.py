"""Pretrained weights into models with any head: load, merge, report.

``create_pretrained("resnet50.tv2_in1k", num_classes=10)`` builds ``resnet50``
with a fresh 10-way head, loads every backbone variable from the ImageNet
checkpoint and reports the key difference::

    model, variables, report = create_pretrained("resnet50.tv_in1k", num_classes=10)
    print(report.summary())   # loaded 320 variables; re-initialised fc/kernel (2048, 1000) -> (2048, 10), ...
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jtl.errors import WeightsError
from jtl.fileio import make_temp_dir
from jtl.models import create_model, family_of
from jtl.weights import registry
from jtl.weights.port import port_timm, port_torchvision

PORT_META = "jtl_port.json"
HEAD_PATTERN = r"^params/fc/|^batch_stats/fc/"  # the ResNets' classifier (create_pretrained: the family's)


@dataclasses.dataclass
class LoadReport:
    """What :func:`merge_pretrained` did with each variable."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    reinitialized: list[str] = dataclasses.field(default_factory=list)  # "path (src shape) -> (new shape)"
    dropped: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} variables"]
        if self.reinitialized:
            parts.append("re-initialised " + ", ".join(self.reinitialized))
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        return "; ".join(parts)


def _flat(tree) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def merge_pretrained(init_variables, pretrained, *, reinit: str = HEAD_PATTERN) -> tuple[dict, LoadReport]:
    """Take every variable of ``init_variables`` from ``pretrained`` where it exists with the same shape.

    Variables whose path matches the regex ``reinit`` (default: the ``fc`` head) may
    differ in shape or be absent on either side; they keep their fresh values and are
    reported. Any other difference raises :class:`WeightsError` naming the keys.
    """
    init, src = _flat(init_variables), _flat(pretrained)
    head = re.compile(reinit)
    report, out, problems = LoadReport(), {}, []
    for key, value in init.items():
        if key in src and np.shape(src[key]) == np.shape(value):
            out[key] = src[key]
            report.loaded.append(key)
        elif head.search(key):
            out[key] = value
            old = np.shape(src[key]) if key in src else "absent"
            report.reinitialized.append(f"{key} {old} -> {tuple(np.shape(value))}")
        elif key in src:
            problems.append(f"{key} {tuple(np.shape(src[key]))} != {tuple(np.shape(value))}")
        else:
            problems.append(f"missing {key}")
    for key in src.keys() - init.keys():
        if head.search(key):
            report.dropped.append(key)
        else:
            problems.append(f"unexpected {key}")
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsError("pretrained weights do not fit the model: " + ", ".join(sorted(problems)[:5]) + more)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()}), report


def load_weights(weights: str | os.PathLike, arch: str | None = None) -> tuple[str, dict]:
    """Read ``weights`` into jtl variables; returns ``(arch, variables)``.

    ``weights`` is a registry name (``resnet50.tv_in1k``: fetched and cached), a
    ``jtl port`` output directory, a torchvision ``.pth`` or a timm ``.safetensors``
    file (the last two need ``arch``).
    """
    w = os.fspath(weights)
    if w in registry.REGISTRY:
        spec = registry.get_spec(w)
        if arch is not None and arch != spec.arch:
            raise WeightsError(f"weights {w} are for {spec.arch}, not {arch}")
        path = registry.fetch(spec)
        port = port_timm if spec.format == "timm" else port_torchvision
        return spec.arch, port(path, spec.arch)
    if os.path.isdir(w):
        meta, variables = read_ported(w)
        if arch is not None and arch != meta["arch"]:
            raise WeightsError(f"{w} holds {meta['arch']} weights, not {arch}")
        return meta["arch"], variables
    if not os.path.exists(w):
        raise WeightsError(f"weights {w!r} are neither a registry name nor an existing file or directory")
    if arch is None:
        raise WeightsError(f"{w}: give the architecture (arch=...) for a weights file")
    return arch, port_torchvision(w, arch)


def create_pretrained(weights: str | os.PathLike, num_classes: int | None, *, arch: str | None = None,
                      seed: int = 0, image_size: int = 224, **model_options):
    """Model with a ``num_classes`` head whose backbone comes from ``weights``.

    Returns ``(model, variables, report)``; the head is ported when its shape
    matches, freshly initialised otherwise (see :class:`LoadReport`).
    """
    arch, pretrained = load_weights(weights, arch)
    model = create_model(arch, num_classes, **model_options)
    init = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
    head = family_of(arch).classifier
    variables, report = merge_pretrained(init, pretrained, reinit=rf"^(params|batch_stats)/{head}/")
    return model, variables, report


def save_ported(out_dir: str | os.PathLike, variables: dict, meta: dict, *, overwrite: bool = False) -> Path:
    """Write ``variables`` as an orbax checkpoint plus ``jtl_port.json`` into ``out_dir``, atomically.

    Everything is written into a temporary sibling directory that is renamed into
    place at the end, so ``out_dir`` is either complete or untouched.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415

    out = Path(out_dir).absolute()
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} already exists; choose another --out or pass --overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out.parent, prefix=f".{out.name}.")  # 0755 under umask 022, not mkdtemp's 0700
    except OSError as e:
        raise WeightsError(f"cannot write to {out.parent} ({e.strerror})") from None
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp / "variables", jax.tree.map(np.asarray, variables))
        ckptr.wait_until_finished()
        (tmp / PORT_META).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_ported(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a ``jtl port`` directory: ``(meta, variables)``."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    path = Path(path).absolute()
    meta_file = path / PORT_META
    if not meta_file.exists():
        raise WeightsError(f"{path} is not a jtl port directory (no {PORT_META})")
    meta = json.loads(meta_file.read_text())
    try:
        variables = ocp.StandardCheckpointer().restore(path / "variables")
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged checkpoint
        raise WeightsError(f"{path / 'variables'}: cannot restore checkpoint ({type(e).__name__})") from None
    return meta, variables
