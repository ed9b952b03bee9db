"""``jtl sweep``: expand a sweep, skip finished runs, train the rest, record failures.

Layout: ``SWEEP_DIR/sweep.json`` (the config, per member its name, overrides and
workdir, and the SLURM job that trains it, if any) and one workdir per member
``SWEEP_DIR/<member_name>/`` holding the run's files (:mod:`jtl.train.loop`) plus
``overrides.json``; a run that failed holds ``failed.json`` (its one-line error and
traceback) instead of ``summary.json``.

Members still to run are grouped by :func:`jtl.train.vector.plan_groups`; a group of
several trains as one vectorized program (:class:`jtl.train.vector.VectorTrainer`),
falling back to one run after another if it cannot be traced as one; a failed run
is recorded and the sweep goes on. Where the groups train is the launcher's choice:
one after another here, side by side on disjoint devices (:mod:`jtl.sweep.devices`),
as the jobs of a SLURM job array (:mod:`jtl.sweep.slurm`), or a share of them per
invocation (``--shard I/N``, :mod:`jtl.sweep.shard`). A run's workdir lock
(:mod:`jtl.train.lock`) keeps two processes from training the same run: the second
reports it ``busy`` and leaves its workdir alone.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from jtl.errors import ConfigError, JtlError
from jtl.sweep.spec import load_sweep, member_name, override_args
from jtl.train import runinfo
from jtl.train.lock import WorkdirBusy

SWEEP_FILE = "sweep.json"


@dataclasses.dataclass
class Run:
    name: str
    overrides: dict
    workdir: Path
    cfg: Any = None
    status: str = "pending"  # pending | done | failed | skipped (finished before) | busy (another process)
    error: str = ""
    wall_s: float = 0.0
    vectorized: int = 1


def expand(config: str, sweep_dir: str | Path, extra: Sequence[str] = ()) -> list[Run]:
    """The sweep's runs, with their configs resolved (a bad member is marked failed, not raised)."""
    from jtl.config import load_config  # noqa: PLC0415

    sweep_dir = Path(sweep_dir).absolute()
    runs = []
    for overrides in load_sweep(config):
        name = member_name(config, {**overrides, **_extra_dict(extra)})
        run = Run(name, overrides, sweep_dir / name)
        try:
            run.cfg = load_config(config, list(extra) + override_args(overrides))
        except ConfigError as e:
            run.status, run.error = "failed", str(e)
        runs.append(run)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{config}: get_sweep returns the same overrides twice")
    return runs


def _extra_dict(extra: Sequence[str]) -> dict:
    return dict(item.partition("=")[::2] for item in extra)


def read_manifest(sweep_dir: str | Path) -> dict:
    """``SWEEP_DIR/sweep.json`` ({} before the sweep's first start)."""
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise JtlError(f"{path} is unreadable ({type(e).__name__}); move it aside and rerun the sweep "
                       "(finished runs are kept)") from None


def write_manifest(config: str, sweep_dir: Path, runs: list[Run], extra: Sequence[str]) -> None:
    """The config and its members; what else ``sweep.json`` holds (SLURM job ids) is kept."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runinfo.write_json(sweep_dir / SWEEP_FILE, {
        **read_manifest(sweep_dir),
        "config": config,
        "overrides": list(extra),
        "members": [{"name": r.name, "overrides": r.overrides, "workdir": r.name} for r in runs],
    })


def prepare(config: str, sweep_dir: str | Path, extra: Sequence[str] = ()) -> list[Run]:
    """Expand the sweep and write its manifest; finished runs become ``skipped``, bad members ``failed``."""
    sweep_dir = Path(sweep_dir).absolute()
    runs = expand(config, sweep_dir, extra)
    write_manifest(config, sweep_dir, runs, extra)
    for r in runs:
        r.workdir.mkdir(parents=True, exist_ok=True)
        runinfo.write_json(r.workdir / "overrides.json", r.overrides)
        if r.status == "failed":  # the member's config itself is wrong
            runinfo.record_failure(r.workdir, ConfigError(r.error))
        elif (r.workdir / "summary.json").exists():
            r.status = "skipped"
    return runs


def plan(runs: list[Run], *, vectorize: bool = True, max_members: int = 32,
         shard: tuple[int, int] | None = None) -> list[list[Run]]:
    """The groups still to train, one program each. They are planned over every valid run, finished or
    not, so that a shard's share never depends on what has finished; then finished runs are dropped."""
    groups = _groups([r for r in runs if r.cfg is not None], vectorize, max_members)
    if shard is not None:
        from jtl.sweep.shard import share  # noqa: PLC0415

        groups = share(groups, *shard)
    return [g for g in ([r for r in group if r.status == "pending"] for group in groups) if g]


def run_sweep(config: str, sweep_dir: str | Path, extra: Sequence[str] = (), *, vectorize: bool = True,
              max_members: int = 32, shard: tuple[int, int] | None = None, train=None, log=print) -> list[Run]:
    """Train every run of ``config``'s sweep that has not finished (those of shard ``(i, n)`` only, if
    given); the runs with their status. ``train(groups, log)`` trains the planned groups and sets their
    runs' status (default: one after another here; :func:`jtl.sweep.devices.run_side_by_side`)."""
    runs = prepare(config, sweep_dir, extra)
    groups = plan(runs, vectorize=vectorize, max_members=max_members, shard=shard)
    todo = [r for g in groups for r in g]
    for r in todo:
        (r.workdir / runinfo.FAILED_FILE).unlink(missing_ok=True)  # a rerun retries failed runs
    where = f" (shard {shard[0]}/{shard[1]}: {len(groups)} groups)" if shard else ""
    log(f"sweep {config}: {len(runs)} runs, {sum(r.status != 'pending' for r in runs)} finished or invalid, "
        f"{len(todo)} to train{where}")
    if train is not None:
        train(groups, log)
    else:
        for group in groups:
            train_group(group, log)
    failed = [r for r in (todo if shard else runs) if r.status == "failed"]
    busy = [r for r in todo if r.status == "busy"]
    log(f"sweep {config}: {sum(r.status in ('done', 'skipped') for r in runs)} of {len(runs)} finished"
        + (f", {len(busy)} busy in another process" if busy else "")
        + (f", {len(failed)} failed:" if failed else ""))
    for r in failed:
        log(f"  {r.name} {brief(r.overrides)}: {r.error}")
    return runs


def train_group(group: list[Run], log=print) -> None:
    """Train one planned group: as one vectorized program if it has several runs, else alone."""
    if len(group) > 1:
        _run_vectorized(group, log)
    else:
        _run_alone(group[0], log)


def train_members(config: str, sweep_dir: str | Path, extra: Sequence[str], names: Sequence[str],
                  log=print) -> dict[str, tuple[str, str]]:
    """Train the unfinished runs ``names`` of a sweep as one group (a SLURM job, a device worker);
    returns name -> (status, error)."""
    by_name = {r.name: r for r in expand(config, sweep_dir, extra)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"{config} no longer defines the runs {', '.join(missing)} of {sweep_dir}; "
                          "was the config file edited after the sweep was launched?")
    group = [by_name[n] for n in names if not (by_name[n].workdir / "summary.json").exists()]
    for r in group:
        (r.workdir / runinfo.FAILED_FILE).unlink(missing_ok=True)  # a resubmitted run that failed is retried
    if group:
        train_group(group, log)
    return {n: (by_name[n].status, by_name[n].error) if by_name[n] in group else ("skipped", "") for n in names}


def _groups(todo: list[Run], vectorize: bool, max_members: int) -> list[list[Run]]:
    if not vectorize or not todo:
        return [[r] for r in todo]
    from jtl.train.vector import plan_groups  # noqa: PLC0415

    out = []
    for idx in plan_groups([r.cfg for r in todo]):
        members = [todo[i] for i in idx]
        out.extend(members[i:i + max_members] for i in range(0, len(members), max(max_members, 1)))
    return out


def _run_alone(run: Run, log) -> None:
    from jtl.train.loop import Trainer  # noqa: PLC0415

    t = time.perf_counter()
    try:
        Trainer(run.cfg, run.workdir).run()
        run.status = "done"
    except WorkdirBusy as e:  # another process trains it: its workdir is left alone
        run.status, run.error = "busy", str(e)
    except Exception as e:  # noqa: BLE001 - one run's failure must not stop the sweep
        _failed(run, e)
    run.wall_s = time.perf_counter() - t
    log(f"  {run.name} {brief(run.overrides)}: {run.status} ({run.wall_s:.0f} s){' - ' + run.error if run.error else ''}")


def _run_vectorized(group: list[Run], log) -> None:
    import jax  # noqa: PLC0415

    from jtl.train.vector import NotVectorizable, VectorTrainer  # noqa: PLC0415

    t = time.perf_counter()
    try:
        summaries = VectorTrainer([r.cfg for r in group], [r.workdir for r in group]).run()
    except (NotVectorizable, jax.errors.ConcretizationTypeError) as e:
        log(f"  {len(group)} runs cannot train as one program ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "training them one by one")
        for r in group:
            _run_alone(r, log)
        return
    except WorkdirBusy as e:  # a member is trained by another process: leave the group to it
        for r in group:
            r.status, r.error = "busy", str(e)
        log(f"  {len(group)} runs left alone: {e}")
        return
    except Exception as e:  # noqa: BLE001 - the whole group failed (data, disk, ...): record it per run
        for r in group:
            _failed(r, e)
        log(f"  {len(group)} runs (vectorized) failed: {group[0].error}")
        return
    wall = time.perf_counter() - t
    for r, s in zip(group, summaries):
        r.wall_s, r.vectorized = wall, len(group)
        if s is None:
            failed = runinfo.read_failure(r.workdir)
            r.status, r.error = "failed", failed
        else:
            r.status = "done"
    log(f"  {len(group)} runs as one vectorized program: {sum(r.status == 'done' for r in group)} done "
        f"({wall:.0f} s)")


def _failed(run: Run, e: BaseException) -> None:
    run.status = "failed"
    run.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    runinfo.record_failure(run.workdir, e)
    if not isinstance(e, JtlError):
        import traceback  # noqa: PLC0415

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)


def brief(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())

