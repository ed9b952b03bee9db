"""Read PyTorch ``.pth`` state dicts into numpy without importing torch.

``torch.save`` (PyTorch >= 1.6) writes a zip archive: ``<root>/data.pkl`` is a
pickle whose tensors refer, through persistent ids
``("storage", StorageClass, key, location, numel)``, to raw little-endian
buffers stored as ``<root>/data/<key>``. A tensor is rebuilt by
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

The unpickler below accepts only the globals such a file needs (ordered dicts,
tensor/parameter rebuilders, storage classes), so loading a file cannot run
arbitrary code. The legacy (pre-1.6, non-zip) format is read through torch
when it is installed.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, Mapping

import numpy as np

from jtl.errors import WeightsError

try:  # bfloat16 comes with jax (ml_dtypes); plain numpy has none.
    from ml_dtypes import bfloat16 as _bf16
except ImportError:  # pragma: no cover
    _bf16 = None

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": _bf16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        if _STORAGE_DTYPES.get(name) is None:
            raise WeightsError(f"unsupported tensor storage type torch.{name} in checkpoint")
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_args, **_kwargs):
    itemsize = storage.dtype.itemsize
    size, stride = tuple(size), tuple(stride)
    numel = int(np.prod(size)) if size else 1
    contiguous = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
    if stride == contiguous or numel <= 1:
        return storage[offset : offset + numel].reshape(size)  # a view: no copy of the weights
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)  # non-contiguous tensor: contiguous copy


def _rebuild_parameter(data, *_args, **_kwargs):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): tuple,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, zf: zipfile.ZipFile, root: str, path: str):
        super().__init__(file)
        self._zf, self._root, self._path = zf, root, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise WeightsError(f"{self._path}: refusing to unpickle {module}.{name} (not a plain state dict)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"{self._path}: unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            raw = self._zf.read(f"{self._root}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
        return self._storages[key]


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state dict as ``{key: np.ndarray}``.

    A checkpoint dict holding the state dict under ``"state_dict"`` or
    ``"model"`` is unwrapped. Raises :class:`WeightsError` naming the file when it is
    missing, truncated or not a PyTorch checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):  # a zip archive whose end (central directory) is missing
            raise WeightsError(f"{path}: truncated or corrupt PyTorch checkpoint (incomplete zip archive)")
        with open(path, "rb") as f:
            start = f.read(64)
        if _LEGACY_MAGIC not in start:
            raise WeightsError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a "
                               "legacy torch file); pass the .pth file written by torch.save(model.state_dict())")
        return _load_legacy(path)
    try:
        with zipfile.ZipFile(path) as zf:
            pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pkls:
                raise WeightsError(f"{path}: zip file without data.pkl, not a PyTorch checkpoint")
            root = pkls[0].split("/")[0]
            byteorder = f"{root}/byteorder"
            if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
                raise WeightsError(f"{path}: big-endian checkpoints are not supported")
            with zf.open(pkls[0]) as f:
                obj = _Unpickler(f, zf, root, path).load()
    except (zipfile.BadZipFile, EOFError, KeyError, pickle.UnpicklingError, ValueError, OSError) as e:
        raise WeightsError(f"{path}: truncated or corrupt PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return _as_state_dict(obj, path)


# Legacy (pre-1.6) torch files open with a pickled magic number: LONG1 opcode, 10 bytes, little-endian.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _load_legacy(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise WeightsError(
            f"{path}: not a zip-format PyTorch checkpoint (legacy format or corrupt); "
            "install torch to read legacy files, or re-save it with torch>=1.6"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure is a bad file here
        # torch's own message spans lines and suggests weights_only=False, which would let the file
        # run arbitrary code: keep its first line only, and only when it does not say that.
        first = (str(e).strip().splitlines() or [""])[0][:200]
        detail = f": {first}" if first and "weights_only" not in first else ""
        raise WeightsError(f"{path}: corrupt or unsupported legacy PyTorch checkpoint ({type(e).__name__}{detail}); "
                           "re-save its state dict with torch.save on torch>=1.6") from None
    obj = _as_state_dict(obj, path)
    return {k: v.detach().float().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in obj.items()}


def _as_state_dict(obj: Any, path: str) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)
