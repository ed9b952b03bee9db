"""Writing outputs atomically, with the permissions the user's umask asks for.

Outputs are written to a temporary file (or directory) beside their final path and renamed
into place, so a reader never sees half of one. ``tempfile.mkstemp``/``mkdtemp`` create
0600/0700 entries; the helpers here give them the mode ``open()``/``mkdir`` would have given
(``0o666``/``0o777`` minus the umask), so collaborators can read the results.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def umask() -> int:
    """The process umask, read without changing it where Linux allows (no window in which
    another thread's files get a wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file: what ``open(path, "w")`` would create."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new directory: what ``os.mkdir`` would create."""
    return 0o777 & ~umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, make_parents: bool = True) -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: writes a temporary file in ``path``'s folder
    (created if missing and ``make_parents``) and renames it to ``path`` when the block succeeds; on any error the
    temporary file is removed and ``path`` is untouched. ``mode`` is ``"w"`` or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), file_mode())
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new, empty directory in ``parent`` (to be filled, then renamed into place) with the
    mode ``os.mkdir`` would give it, not ``mkdtemp``'s 0700."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, dir_mode())
    return tmp
