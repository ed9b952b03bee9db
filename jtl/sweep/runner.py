"""``jtl sweep``: expand a sweep, skip finished runs, train the rest, record failures.

Layout: ``SWEEP_DIR/sweep.json`` (the config, and per member its name, overrides and
workdir) and one workdir per member ``SWEEP_DIR/<member_name>/`` holding the run's
files (:mod:`jtl.train.loop`) plus ``overrides.json``; a run that failed holds
``failed.json`` (its one-line error and traceback) instead of ``summary.json``.

Members still to run are grouped by :func:`jtl.train.vector.plan_groups`; a group of
several trains as one vectorized program (:class:`jtl.train.vector.VectorTrainer`),
falling back to one run after another if it cannot be traced as one; a failed run
is recorded and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from jtl.errors import ConfigError, JtlError
from jtl.sweep.spec import load_sweep, member_name, override_args
from jtl.train import runinfo

SWEEP_FILE = "sweep.json"


@dataclasses.dataclass
class Run:
    name: str
    overrides: dict
    workdir: Path
    cfg: Any = None
    status: str = "pending"  # pending | done | failed | skipped
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


def write_manifest(config: str, sweep_dir: Path, runs: list[Run], extra: Sequence[str]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runinfo.write_json(sweep_dir / SWEEP_FILE, {
        "config": config,
        "overrides": list(extra),
        "members": [{"name": r.name, "overrides": r.overrides, "workdir": r.name} for r in runs],
    })


def run_sweep(config: str, sweep_dir: str | Path, extra: Sequence[str] = (), *, vectorize: bool = True,
              max_members: int = 32, log=print) -> list[Run]:
    """Run every member of ``config``'s sweep that has not finished; returns the runs with their status."""
    sweep_dir = Path(sweep_dir).absolute()
    runs = expand(config, sweep_dir, extra)
    write_manifest(config, sweep_dir, runs, extra)
    todo = []
    for r in runs:
        r.workdir.mkdir(parents=True, exist_ok=True)
        runinfo.write_json(r.workdir / "overrides.json", r.overrides)
        if r.status == "failed":  # the member's config itself is wrong
            runinfo.record_failure(r.workdir, ConfigError(r.error))
        elif (r.workdir / "summary.json").exists():
            r.status = "skipped"
        else:
            (r.workdir / runinfo.FAILED_FILE).unlink(missing_ok=True)  # a rerun retries failed runs
            todo.append(r)
    log(f"sweep {config}: {len(runs)} runs, {len(runs) - len(todo)} finished or invalid, {len(todo)} to train")
    groups = _groups(todo, vectorize, max_members)
    for group in groups:
        if len(group) > 1:
            _run_vectorized(group, log)
        else:
            _run_alone(group[0], log)
    failed = [r for r in runs if r.status == "failed"]
    log(f"sweep {config}: {sum(r.status in ('done', 'skipped') for r in runs)} of {len(runs)} finished"
        + (f", {len(failed)} failed:" if failed else ""))
    for r in failed:
        log(f"  {r.name} {_brief(r.overrides)}: {r.error}")
    return runs


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
    except Exception as e:  # noqa: BLE001 - one run's failure must not stop the sweep
        _failed(run, e)
    run.wall_s = time.perf_counter() - t
    log(f"  {run.name} {_brief(run.overrides)}: {run.status} ({run.wall_s:.0f} s){' - ' + run.error if run.error else ''}")


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


def _brief(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep (get_sweep in a config file), vectorized where possible",
                       description="sweep --config FILE[:ARG] --workdir DIR [--config.KEY=VALUE ...]")
    p.add_argument("--config", required=True, help="config file defining get_config and get_sweep")
    p.add_argument("--workdir", required=True, help="the sweep's directory (one subdirectory per run)")
    p.add_argument("--sequential", action="store_true", help="train one run after another (no vectorization)")
    p.add_argument("--max-members", type=int, default=32, help="at most this many runs in one vectorized program")
    p.add_argument("--list", action="store_true", help="print the runs and their status; train nothing")
    p.set_defaults(handler=cmd_sweep, accepts_overrides=True)


def cmd_sweep(args) -> int:
    extra = [o.removeprefix("config.") for o in args.overrides]
    if args.max_members < 1:
        raise ConfigError(f"--max-members must be >= 1, got {args.max_members}")
    if args.list:
        runs = expand(args.config, args.workdir, extra)
        for r in runs:
            status = ("done" if (r.workdir / "summary.json").exists() else
                      "failed" if r.status == "failed" or (r.workdir / runinfo.FAILED_FILE).exists() else "pending")
            print(f"{r.name}  {status:8s} {_brief(r.overrides)}")
        return 0
    runs = run_sweep(args.config, args.workdir, extra, vectorize=not args.sequential, max_members=args.max_members)
    return 1 if any(r.status == "failed" for r in runs) else 0
