"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events.

In a multi-process run only process 0 writes (:func:`jtl.distributed.is_writer`); the
writers of the other processes accept the same calls and write nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from jtl.distributed import is_writer


class MetricWriter:
    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.active = is_writer()
        self._tb = None
        if not self.active:
            return
        self._truncate_after(resume_step)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # noqa: PLC0415

                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            except ImportError:
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` by a run that was killed before checkpointing them.

        A line cut short (a kill or a full disk in the middle of a write) is dropped too.
        """
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text(errors="replace").splitlines() if _step_of(ln, step + 1) <= step]
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        data = memoryview((json.dumps(row) + "\n").encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                os.ftruncate(fd, size)  # no half line left behind (e.g. disk full)
                raise
        finally:
            os.close(fd)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _step_of(line: str, bad: int) -> int:
    """The ``step`` of a metrics line; ``bad`` for a blank or damaged one."""
    try:
        return int(json.loads(line).get("step", 0)) if line.strip() else bad
    except (ValueError, AttributeError):
        return bad


def _plain(v):
    if hasattr(v, "item") and getattr(v, "size", 2) == 1:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
