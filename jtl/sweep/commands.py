"""``jtl sweep``'s command line: launchers (local, slurm), ``--shard``, ``--devices-per-group``, ``--list``."""

from __future__ import annotations

from pathlib import Path

from jtl.errors import ConfigError


def add_parser(sub) -> None:
    """Register ``jtl sweep``."""
    p = sub.add_parser("sweep", help="run a sweep (get_sweep in a config file), vectorized where possible",
                       description="sweep --config FILE[:ARG] --workdir DIR [--config.KEY=VALUE ...]")
    p.add_argument("--config", required=True, help="config file defining get_config and get_sweep")
    p.add_argument("--workdir", required=True, help="the sweep's directory (one subdirectory per run)")
    p.add_argument("--sequential", action="store_true", help="train one run after another (no vectorization)")
    p.add_argument("--max-members", type=int, default=32, help="at most this many runs in one vectorized program")
    p.add_argument("--list", action="store_true",
                   help="print the runs and their status (done, queued, running, failed, stopped, pending); train nothing")
    p.add_argument("--shard", metavar="I/N", help="train only shard I of N of the sweep's groups (one per host)")
    p.add_argument("--devices-per-group", type=int, metavar="D",
                   help="train independent groups side by side, each on D of this host's devices")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: train here; slurm: one job array task per group (submitit)")
    s = p.add_argument_group("slurm (--launcher slurm; defaults from get_slurm() in the config file)")
    s.add_argument("--partition", help="sbatch --partition")
    s.add_argument("--time", dest="time_min", type=int, metavar="MIN", help="sbatch --time, minutes per job (60)")
    s.add_argument("--gpus-per-job", type=int, metavar="N", help="sbatch --gpus-per-node (0)")
    s.add_argument("--cpus-per-job", type=int, metavar="N", help="sbatch --cpus-per-task")
    s.add_argument("--mem-gb", type=float, metavar="GB", help="sbatch --mem")
    s.add_argument("--array-parallelism", type=int, metavar="P", help="sbatch --array=0-N%%P (256)")
    s.add_argument("--max-requeues", type=int, metavar="N", help="requeues after a timeout (3)")
    s.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="any other sbatch option, e.g. qos=high")
    s.add_argument("--wait", action="store_true", help="return when the submitted jobs have left the queue")
    p.set_defaults(handler=cmd_sweep, accepts_overrides=True)


SLURM_FLAGS = ("partition", "time_min", "gpus_per_job", "cpus_per_job", "mem_gb", "array_parallelism", "max_requeues")


def cmd_sweep(args) -> int:
    from jtl.sweep import runner  # noqa: PLC0415

    extra = [o.removeprefix("config.") for o in args.overrides]
    if args.max_members < 1:
        raise ConfigError(f"--max-members must be >= 1, got {args.max_members}")
    if args.devices_per_group is not None and args.devices_per_group < 1:
        raise ConfigError(f"--devices-per-group must be >= 1, got {args.devices_per_group}")
    if args.list:
        from jtl.sweep.status import print_status  # noqa: PLC0415

        print_status(args.config, args.workdir, extra)
        return 0
    if args.launcher == "slurm":
        from jtl.sweep import slurm  # noqa: PLC0415

        if args.shard or args.devices_per_group:
            raise ConfigError("--launcher slurm plans the jobs itself: drop --shard/--devices-per-group "
                              "(a job's devices: --gpus-per-job)")
        flags = {k: getattr(args, k) for k in SLURM_FLAGS}
        flags["sbatch"] = slurm.parse_sbatch_flags(args.sbatch)
        opts = slurm.options(args.config, flags)
        runs = slurm.launch(args.config, args.workdir, extra, opts, vectorize=not args.sequential,
                            max_members=args.max_members, wait=args.wait)
        if args.wait:
            from jtl.sweep.status import print_status  # noqa: PLC0415

            statuses = print_status(args.config, args.workdir, extra)
            return 0 if all(s == "done" for s in statuses.values()) else 1
        return 1 if any(r.status == "failed" for r in runs) else 0
    given = [f for f in (*SLURM_FLAGS, "sbatch", "wait") if getattr(args, f) not in (None, False)]
    if given:
        raise ConfigError(f"--{given[0].replace('_min', '').replace('_', '-')} is a SLURM option: add --launcher slurm")
    shard = None
    if args.shard:
        from jtl.sweep.shard import parse_shard  # noqa: PLC0415

        shard = parse_shard(args.shard)
    train = None
    if args.devices_per_group:
        import jax  # noqa: PLC0415

        from jtl.sweep.devices import run_side_by_side  # noqa: PLC0415

        jax.config.update("jax_platforms", "cpu")  # this process only plans: the workers own the accelerators
        sweep_dir = Path(args.workdir).absolute()

        def train(groups, log):
            run_side_by_side(args.config, sweep_dir, extra, groups, args.devices_per_group, log)
    runs = runner.run_sweep(args.config, args.workdir, extra, vectorize=not args.sequential,
                            max_members=args.max_members, shard=shard, train=train)
    mine = [r for r in runs if r.status not in ("skipped",)]
    return 1 if any(r.status in ("failed", "busy") for r in mine) else 0
