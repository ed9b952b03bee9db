"""Port PyTorch (torchvision / timm) state dicts into jtl's Flax variables, for any family.

A family (:mod:`jtl.models.backbones`) gives each variable's state-dict key; e.g. for
the ResNets (``layer2.0``)::

    layer2.0.conv1.weight        (O, I, kh, kw) -> params/layer2_0/conv1/kernel (kh, kw, I, O)
    layer2.0.bn1.weight | bias   (C,)           -> params/layer2_0/bn1/scale | bias
    layer2.0.bn1.running_mean    (C,)           -> batch_stats/layer2_0/bn1/mean
    layer2.0.bn1.running_var     (C,)           -> batch_stats/layer2_0/bn1/var
    layer2.0.downsample.0 / .1                  -> layer2_0/downsample_conv / downsample_bn
    fc.weight (out, in)                         -> params/fc/kernel (in, out)

Convolution kernels go OIHW -> HWIO and linear ones (out, in) -> (in, out); everything
else is copied. ``*.num_batches_tracked`` is accepted and dropped; a ``module.`` prefix
(from ``DataParallel``) is stripped. Anything else that does not match exactly
(missing, unexpected or mis-shaped key) raises :class:`WeightsError` naming the keys.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jtl.errors import WeightsError
from jtl.models import arch_names, create_model, family_of

Array = Any


def torch_key(collection: str, path: tuple[str, ...], arch: str = "resnet50") -> str:
    """The PyTorch state-dict key of the flax variable ``collection/path`` of ``arch``."""
    del collection  # scale/bias/mean/var leaf names are unique across collections
    return family_of(arch).torch_key(tuple(path))


def to_flax_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    """Convert a torch tensor to the flax layout of variable ``leaf``."""
    if leaf == "kernel" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if leaf == "kernel" and value.ndim == 2:
        return np.ascontiguousarray(value.T)  # (out, in) -> (in, out)
    return value


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(shape) == 2:
        return shape[::-1]
    return tuple(shape)


def variable_shapes(arch: str, num_classes: int | None, image_size: int = 64) -> dict[tuple[str, ...], tuple]:
    """``{(collection, *path): shape}`` of ``arch``'s variables, computed abstractly."""
    model = create_model(arch, num_classes)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    flat = traverse_util.flatten_dict(jax.tree.map(lambda a: a.shape, abstract, is_leaf=lambda a: hasattr(a, "shape")))
    return {k: v for k, v in flat.items()}


def _clean_keys(state_dict: Mapping[str, Array]) -> dict[str, Array]:
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def port_state_dict(
    state_dict: Mapping[str, Array], arch: str, *, include_head: bool = True, source: str = "state dict"
) -> dict[str, Any]:
    """Map a torchvision-layout state dict onto ``arch``; returns ``{"params", "batch_stats"}``.

    The head size is read from the classifier's weight (``fc.weight`` for the ResNets).
    ``include_head=False`` drops the classifier (and builds a backbone without one).
    Refuses any key difference.
    """
    family = family_of(arch) if arch in arch_names() else None
    if family is None or arch not in family.torch_archs:
        portable = [a for a in arch_names() if a in family_of(a).torch_archs]
        raise WeightsError(f"unknown or non-PyTorch architecture {arch!r}; portable: {', '.join(portable)}")
    sd = _clean_keys(state_dict)
    if family.rename_keys is not None:
        sd = family.rename_keys(sd)
    if family.ignored_keys:
        ignored = re.compile("|".join(family.ignored_keys))
        sd = {k: v for k, v in sd.items() if not ignored.search(k)}
    head_weight = family.torch_key((family.classifier, "kernel"))
    head_prefix = head_weight[: -len("weight")]
    if include_head:
        if head_weight not in sd:
            raise WeightsError(f"{source}: missing key {head_weight} (use include_head=False for a headless checkpoint)")
        num_classes = int(np.shape(sd[head_weight])[0])
    else:
        heads = (head_prefix, *(family.torch_key((m, "kernel"))[: -len("weight")] for m in family.extra_classifiers))
        sd = {k: v for k, v in sd.items() if not k.startswith(heads)}
        num_classes = None
    expected = variable_shapes(arch, num_classes, family.input_size)
    wanted = {family.torch_key(tuple(p)): (c, p, shape) for (c, *p), shape in expected.items()}
    missing = sorted(set(wanted) - set(sd))
    unexpected = sorted(set(sd) - set(wanted))
    misshaped = []
    for key in sorted(set(wanted) & set(sd)):
        _, path, shape = wanted[key]
        want = _torch_shape(shape, path[-1])
        if tuple(np.shape(sd[key])) != want:
            misshaped.append(f"{key} {tuple(np.shape(sd[key]))} != {want}")
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise WeightsError(f"{source} does not fit {arch}: " + "; ".join(parts))
    flat = {}
    for key, (collection, path, _) in wanted.items():
        value = np.asarray(sd[key])
        if value.dtype != np.float32:
            value = value.astype(np.float32)
        flat[(collection, *path)] = to_flax_layout(value, path[-1])
    return traverse_util.unflatten_dict(flat)


def read_state_dict(src: str | os.PathLike | Mapping[str, Array]) -> tuple[dict[str, Array], str]:
    """Read ``src`` (``.pth``/``.pt``/``.bin`` torch file, ``.safetensors`` file or mapping)."""
    if isinstance(src, Mapping):
        return dict(src), "state dict"
    path = os.fspath(src)
    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors(path), path
    from jtl.weights.torch_format import load_pth  # noqa: PLC0415

    return load_pth(path), path


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Read a safetensors file (timm's format) into numpy, without torch."""
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError, TypeError) as e:
        raise WeightsError(f"{path}: truncated or corrupt safetensors file ({e})") from None


def port_torchvision(src: str | os.PathLike | Mapping[str, Array], arch: str, *, include_head: bool = True) -> dict:
    """Port a torchvision checkpoint (path to ``.pth`` or a mapping of arrays).

    Returns ``{"params": ..., "batch_stats": ...}`` for ``create_model(arch, num_classes)``
    with ``num_classes`` taken from the checkpoint's ``fc``.
    """
    sd, source = read_state_dict(src)
    return port_state_dict(sd, arch, include_head=include_head, source=source)


def port_timm(src: str | os.PathLike | Mapping[str, Array], arch: str, *, include_head: bool = True) -> dict:
    """Port a timm ResNet checkpoint (``model.safetensors`` path or a mapping).

    timm's ``resnet*`` modules (``resnet50.a1_in1k`` etc.) use torchvision's
    architecture and key names, so this reads the file without torch and maps it
    exactly like :func:`port_torchvision`.
    """
    sd, source = read_state_dict(src)
    return port_state_dict(sd, arch, include_head=include_head, source=source)
