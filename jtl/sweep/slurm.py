"""``jtl sweep --launcher slurm``: each group of a sweep becomes one task of a SLURM job array (submitit).

A group is what a local sweep trains as one program (:func:`jtl.sweep.runner.plan`):
several runs vectorized, or one run that cannot be grouped. The array task trains it
with the same code as a local sweep (:func:`jtl.sweep.runner.train_members`), so its
numbers are the local sweep's. ``sweep.json`` records each run's job id ("jobs").

A rerun submits only the runs that are neither finished (``summary.json``) nor in the
queue (``squeue``), so a job cancelled, killed, timed out for good or lost with its node
is resubmitted, and resumes from its run's newest checkpoint (jtl's resume is bitwise).
Before its time limit SLURM sends USR2 (``--signal=USR2@90``); submitit then requeues the
job (``scontrol requeue``, at most ``max_requeues`` times for timeouts, always for
pre-emption), and the requeued job resumes from the newest checkpoint as well: what
it loses is the steps since that checkpoint (``checkpoint_every``).

Options come from the flags or from ``get_slurm(arg=None)`` in the sweep's config file
(a dict with the keys of :class:`SlurmOptions`); flags win.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import io
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Sequence

from jtl.errors import ConfigError, JtlError
from jtl.sweep import runner

# States after which a job is out of the queue for good (squeue shows them briefly).
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


@dataclasses.dataclass
class SlurmOptions:
    """What each array task asks for; the ``sbatch`` flag each maps to is in the comment."""

    partition: str | None = None  # --partition
    time_min: int = 60  # --time (minutes)
    gpus_per_job: int = 0  # --gpus-per-node
    cpus_per_job: int | None = None  # --cpus-per-task
    mem_gb: float | None = None  # --mem
    array_parallelism: int = 256  # --array=0-N%P: at most P tasks at once
    max_requeues: int = 3  # submitit: requeues after a timeout (pre-emption requeues always)
    sbatch: dict = dataclasses.field(default_factory=dict)  # any other flag: {"qos": "high"} -> --qos=high

    def validate(self) -> "SlurmOptions":
        for key in ("time_min", "array_parallelism"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"slurm option {key} must be a positive integer, got {getattr(self, key)!r}")
        for key in ("gpus_per_job", "max_requeues"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ConfigError(f"slurm option {key} must be an integer >= 0, got {getattr(self, key)!r}")
        if self.cpus_per_job is not None and (not isinstance(self.cpus_per_job, int) or self.cpus_per_job < 1):
            raise ConfigError(f"slurm option cpus_per_job must be a positive integer, got {self.cpus_per_job!r}")
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float)) and self.mem_gb > 0):
            raise ConfigError(f"slurm option mem_gb must be a positive number, got {self.mem_gb!r}")
        return self

    def executor_parameters(self, job_name: str) -> dict:
        """submitit ``SlurmExecutor.update_parameters`` keywords."""
        params = {"job_name": job_name, "time": self.time_min, "array_parallelism": self.array_parallelism}
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        if self.cpus_per_job:
            params["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb:
            params["mem"] = f"{int(self.mem_gb * 1024)}M"
        if self.sbatch:
            params["additional_parameters"] = {k.removeprefix("--").replace("-", "_"): v for k, v in self.sbatch.items()}
        return params


def options(config: str, flags: dict) -> SlurmOptions:
    """The config file's ``get_slurm(arg)`` (if it defines one) overridden by the flags that were given."""
    from jtl.config import call_config_file, load_module  # noqa: PLC0415

    path, _, arg = config.partition(":")
    values = {}
    if hasattr(load_module(path), "get_slurm"):
        values = call_config_file(path, "get_slurm", arg)
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: get_slurm must return a dict of slurm options")
    known = {f.name for f in dataclasses.fields(SlurmOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: get_slurm returns unknown options {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    given = {k: v for k, v in flags.items() if v is not None and v != {}}
    sbatch = {**values.pop("sbatch", {}), **given.pop("sbatch", {})}
    return SlurmOptions(**{**values, **given, "sbatch": sbatch}).validate()


def parse_sbatch_flags(items: Sequence[str]) -> dict:
    """``["qos=high", "--constraint=a100"]`` -> ``{"qos": "high", "constraint": "a100"}``."""
    out = {}
    for item in items or ():
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"--sbatch {item!r} is not KEY=VALUE (e.g. --sbatch qos=high)")
        out[key] = value
    return out


def check_ready(opts: SlurmOptions) -> None:
    """Refuse, before anything is submitted, a machine without submitit or sbatch, or an unknown partition."""
    try:
        import_submitit()
    except ImportError:
        raise JtlError("--launcher slurm needs the submitit package: pip install submitit") from None
    if shutil.which("sbatch") is None:
        raise JtlError("--launcher slurm: sbatch not found on PATH; run on a SLURM login node, "
                       "or split the sweep among hosts with --shard I/N") from None
    if opts.partition:
        known = partitions()
        if known is not None and opts.partition not in known:
            raise JtlError(f"unknown SLURM partition {opts.partition!r}; this cluster has: {', '.join(known)}")


def import_submitit():
    """``import submitit`` without its logging set-up here (``dictConfig`` closes every logging handler
    already installed); jobs, which do not inherit this, still log as submitit does."""
    saved = os.environ.get("SUBMITIT_LOG_LEVEL")
    os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
    try:
        import submitit  # noqa: PLC0415

        return submitit
    finally:
        if saved is None:
            del os.environ["SUBMITIT_LOG_LEVEL"]
        else:
            os.environ["SUBMITIT_LOG_LEVEL"] = saved


def partitions() -> list[str] | None:
    """The cluster's partition names (``sinfo``), or None if they cannot be listed."""
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sorted(set(r.stdout.split())) if r.returncode == 0 else None


def queue(strict: bool = False) -> dict[str, str]:
    """This user's jobs still in the queue: job id (array tasks as ``ID_TASK``) -> state. {} if ``squeue``
    cannot tell (``strict``: a one-line error instead, as a submission must not guess)."""
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise OSError((r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1])
    except (OSError, subprocess.TimeoutExpired) as e:
        if strict:
            raise JtlError(f"squeue cannot list the queue ({e}), so the queued runs are unknown; "
                           "nothing was submitted, retry when the SLURM controller answers") from None
        return {}
    jobs = dict(line.split("|", 1) for line in r.stdout.split() if "|" in line)
    return {j: s for j, s in jobs.items() if s not in ENDED}


class GroupJob:
    """One array task: train a group of the sweep's runs. submitit calls :meth:`checkpoint` on USR2
    (time limit or pre-emption) and requeues the job, which then resumes from the runs' checkpoints."""

    def __init__(self, config: str, sweep_dir: str, extra: Sequence[str], cwd: str):
        self.config, self.sweep_dir, self.extra, self.cwd = config, sweep_dir, list(extra), cwd

    def __call__(self, names: Sequence[str]) -> dict[str, tuple[str, str]]:
        os.chdir(self.cwd)  # the config path (and the run names hashed from it) as the sweep was given
        return runner.train_members(self.config, self.sweep_dir, self.extra, names)

    def checkpoint(self, names: Sequence[str]):
        from submitit.helpers import DelayedSubmission  # noqa: PLC0415

        return DelayedSubmission(GroupJob(self.config, self.sweep_dir, self.extra, self.cwd), names)


def launch(config: str, sweep_dir: str | Path, extra: Sequence[str], opts: SlurmOptions, *, vectorize: bool = True,
           max_members: int = 32, wait: bool = False, log=print) -> list[runner.Run]:
    """Submit the groups of the sweep that are neither finished nor queued, as one job array."""
    check_ready(opts)
    queued = queue(strict=True)
    sweep_dir = Path(sweep_dir).absolute()
    runs = runner.prepare(config, sweep_dir, extra)
    jobs = runner.read_manifest(sweep_dir).get("jobs", {})
    for r in runs:
        if r.status == "pending" and jobs.get(r.name) in queued:
            r.status = "queued"
    groups = runner.plan(runs, vectorize=vectorize, max_members=max_members)
    log(f"sweep {config}: {len(runs)} runs, {sum(r.status in ('skipped', 'failed') for r in runs)} finished or "
        f"invalid, {sum(r.status == 'queued' for r in runs)} in the queue, {sum(map(len, groups))} to submit "
        f"as {len(groups)} jobs")
    if groups:
        ids = _submit(config, sweep_dir, extra, groups, opts)
        for group, job_id in zip(groups, ids):
            for r in group:
                jobs[r.name] = job_id
                r.status = "queued"
        runner.runinfo.write_json(sweep_dir / runner.SWEEP_FILE, {**runner.read_manifest(sweep_dir), "jobs": jobs})
        log(f"submitted job array {ids[0].split('_')[0]} ({len(ids)} tasks); logs in {sweep_dir / 'slurm'}")
    waiting = {jobs[r.name] for r in runs if r.status == "queued"}
    if wait and waiting:
        wait_for(waiting, log)
    return runs


def _submit(config: str, sweep_dir: Path, extra: Sequence[str], groups: list[list[runner.Run]],
            opts: SlurmOptions) -> list[str]:
    submitit = import_submitit()
    from submitit.core.utils import FailedJobError  # noqa: PLC0415

    executor = submitit.SlurmExecutor(folder=sweep_dir / "slurm" / "%j", max_num_timeout=opts.max_requeues)
    try:
        executor.update_parameters(**opts.executor_parameters(f"jtl-{sweep_dir.name}"))
    except ValueError as e:  # submitit names the bad keyword
        raise ConfigError(f"slurm options: {str(e).splitlines()[0]}") from None
    job = GroupJob(config, str(sweep_dir), extra, os.getcwd())
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):  # submitit echoes sbatch's stderr: it goes in the one line below
            submitted = executor.map_array(job, [[r.name for r in g] for g in groups])
    except (FailedJobError, subprocess.CalledProcessError, OSError) as e:
        text = f"{e}\n{err.getvalue()}"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        lines = [ln for ln in lines if "error" in ln.lower()] or lines
        raise JtlError(f"sbatch refused the job array ({lines[-1] if lines else type(e).__name__}); "
                       "nothing was submitted") from None
    return [j.job_id for j in submitted]


def wait_for(job_ids: set[str], log=print, poll_s: float = 5.0) -> None:
    """Block until none of ``job_ids`` is in the queue."""
    left = set(job_ids)
    while left:
        left &= set(queue())
        if left:
            time.sleep(poll_s)
    log(f"{len(job_ids)} jobs left the queue")
