"""``jtl sweep --list``: each run's status, from its workdir and the scheduler, without training anything.

A run is ``done`` (``summary.json``), ``queued`` or ``running`` (its SLURM job, recorded in
``sweep.json``, is in ``squeue``; or a live process holds its workdir lock), ``failed``
(``failed.json``, or its member's config is invalid), ``stopped`` (checkpoints but no
summary and nobody training it: a rerun resumes it) or ``pending`` (not started).
"""

from __future__ import annotations

import collections
import fcntl
from pathlib import Path

from jtl.sweep import runner
from jtl.train import runinfo
from jtl.train.lock import LOCK_FILE

STARTED = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}


def lock_holder(workdir: Path) -> str | None:
    """Who holds ``workdir``'s run lock ("pid N on HOST"), or None if no live process does."""
    path = workdir / LOCK_FILE
    try:
        f = open(path)  # noqa: SIM115 - closed below; never created here
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "a live process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def latest_checkpoint(workdir: Path) -> int | None:
    """The newest complete checkpoint's step (orbax names finished ones by their step alone)."""
    try:
        steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    except OSError:
        return None
    return max(steps, default=None)


def run_status(run: runner.Run, job: str | None, queued: dict[str, str]) -> tuple[str, str]:
    """``(status, detail)`` of one run; ``job``: its recorded SLURM job id, ``queued``: :func:`slurm.queue`."""
    wd = run.workdir
    if run.cfg is None:
        return "failed", run.error
    if (wd / "summary.json").exists():
        return "done", ""
    if job in queued:
        return ("running" if queued[job] in STARTED else "queued"), f"job {job} {queued[job]}"
    holder = lock_holder(wd)
    if holder:
        return "running", holder
    if (wd / runinfo.FAILED_FILE).exists():
        return "failed", runinfo.read_failure(wd)
    step = latest_checkpoint(wd)
    ended = f"job {job} ended; " if job else ""
    if step is not None:
        return "stopped", f"{ended}checkpoint at step {step}: a rerun resumes it"
    return "pending", ended.removesuffix("; ")


def print_status(config: str, sweep_dir: str | Path, extra=(), out=print) -> dict[str, str]:
    """Print one line per run (a count of each status first); returns name -> status."""
    from jtl.sweep.slurm import queue  # noqa: PLC0415

    runs = runner.expand(config, sweep_dir, extra)
    jobs = runner.read_manifest(Path(sweep_dir).absolute()).get("jobs", {})
    queued = queue() if jobs else {}
    rows = [(r, *run_status(r, jobs.get(r.name), queued)) for r in runs]
    counts = collections.Counter(status for _, status, _ in rows)
    out(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r, status, detail in rows:
        out(f"{r.name}  {status:8s} {runner.brief(r.overrides)}" + (f"  [{detail}]" if detail else ""))
    return {r.name: status for r, status, _ in rows}
