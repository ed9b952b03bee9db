"""What a run is doing, one line at a time: phases that take over a second, evaluations.

Lines go to standard output from process 0 only, as ``jtl: <what>``; while a tqdm
progress bar is on screen they are written above it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from jtl.distributed import is_writer

_START = time.time()
SLOW_S = 1.0  # phases shorter than this are not reported


def say(message: str) -> None:
    """Print ``jtl: message`` (process 0 only)."""
    if not is_writer():
        return
    line = f"jtl: {message}"
    try:
        from tqdm import tqdm  # noqa: PLC0415

        if getattr(tqdm, "_instances", None):
            tqdm.write(line, file=sys.stdout)
            return
    except ImportError:  # pragma: no cover
        pass
    print(line, flush=True)


@contextlib.contextmanager
def phase(what: str, *, threshold_s: float = SLOW_S):
    """Time a block; report ``jtl: <what>: 2.3 s`` if it took longer than ``threshold_s``."""
    t = time.perf_counter()
    yield
    dt = time.perf_counter() - t
    if dt >= threshold_s:
        say(f"{what}: {dt:.1f} s")


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere: since jtl was imported)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / ticks, 0.0)
    except (OSError, ValueError, IndexError):
        return time.time() - _START
