"""One run per workdir: an advisory ``flock`` on ``WORKDIR/.lock`` for as long as a run lives.

The kernel drops the lock when its process ends, however it ends (SIGKILL included), so
a stale ``.lock`` file left by a killed run never blocks its resumption. Within one
process the lock is re-entrant (a sweep or a test may open the same workdir twice).
Only process 0 of a multi-process run takes it: the others write nothing there.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from jtl.distributed import is_writer
from jtl.errors import JtlError

LOCK_FILE = ".lock"
_held: dict[str, list] = {}  # path -> [open file, reference count]


class WorkdirBusy(JtlError):
    """Another live process is training in this workdir."""


def acquire(workdir: str | os.PathLike) -> str | None:
    """Lock ``workdir`` (created if needed) for this process; returns the key for :func:`release`."""
    if not is_writer():
        return None
    try:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JtlError(f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir") from None
    path = str((Path(workdir) / LOCK_FILE).absolute())
    if path in _held:
        _held[path][1] += 1
        return path
    try:
        f = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime
    except OSError as e:
        raise JtlError(f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise WorkdirBusy(f"workdir {workdir} is in use by a live run ({owner}); wait for it to finish, "
                          "or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    _held[path] = [f, 1]
    return path


def release(key: str | None) -> None:
    """Drop one reference to the lock ``key``; the last one unlocks."""
    if key is None or key not in _held:
        return
    entry = _held[key]
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        entry[0].close()
