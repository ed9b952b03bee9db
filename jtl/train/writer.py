"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events.

In a multi-process run only process 0 writes (:func:`jtl.distributed.is_writer`); the
writers of the other processes accept the same calls and write nothing.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
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
                self._tb = _TensorBoard(Path(workdir) / "tensorboard")
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
            self._tb.add_scalars(step, {k: v for k, v in row.items()
                                        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)})

    def close(self) -> OSError | None:
        """Flush and close the TensorBoard events. Never raises: it runs while another error (a full
        disk, say) may be on its way out, which must reach the user; the OSError that kept the last
        events from being written is returned instead (``metrics.jsonl`` holds every logged value)."""
        tb, self._tb = self._tb, None
        return tb.close() if tb is not None else None


class _TensorBoard:
    """Scalars in a TensorBoard events file, written in the calling thread.

    tensorboardX's ``SummaryWriter`` writes from a background thread and flushes again at exit,
    so a full disk surfaced there as tracebacks after the run's own one-line error; here every
    write error reaches the caller (``close`` returns it)."""

    FLUSH_SECS = 30.0

    def __init__(self, logdir: Path):
        from tensorboardX.proto.event_pb2 import Event  # noqa: PLC0415
        from tensorboardX.record_writer import RecordWriter  # noqa: PLC0415
        from tensorboardX.summary import scalar  # noqa: PLC0415

        self._event, self._scalar = Event, scalar
        logdir.mkdir(parents=True, exist_ok=True)
        stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        path, n = logdir / stem, 0
        while path.exists():  # a resume within the same second: never overwrite earlier events
            n += 1
            path = logdir / f"{stem}.{n}"
        self._file = RecordWriter(str(path))
        self._file.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self._flushed = time.monotonic()

    def add_scalars(self, step: int, scalars: dict) -> None:
        now = time.time()
        for k, v in scalars.items():
            self._file.write(self._event(wall_time=now, step=int(step), summary=self._scalar(k, v)).SerializeToString())
        if time.monotonic() - self._flushed > self.FLUSH_SECS:
            self._file.flush()
            self._flushed = time.monotonic()

    def close(self) -> OSError | None:
        error = None
        try:
            self._file.flush()
        except OSError as e:
            error = e
        try:
            self._file.close()  # closes the file even when its last flush fails
        except OSError as e:
            error = error or e
        return error


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
