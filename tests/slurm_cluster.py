"""A one-node SLURM for tests: munged, slurmctld and slurmd on 127.0.0.1 with 2 CPUs, all in a tmp dir.

Uses Debian's ``slurm-wlm`` and ``munge`` packages (``make setup`` installs them as root).
:func:`one_node_slurm` yields the environment (``SLURM_CONF``) that ``sbatch``/``squeue``
need; every daemon it started is stopped (by its pid) on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
PARTITION = "jtltest"


def missing() -> str | None:
    """Why a one-node SLURM cannot start here (None if it can)."""
    paths = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin") for name in DAEMONS}
    absent = [n for n, p in paths.items() if p is None]
    if absent:
        return f"SLURM/munge not installed ({', '.join(absent)} missing; make setup installs slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: Path, node: str) -> str:
    return f"""\
ClusterName=jtltest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
MailProg=/bin/true
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={socket.gethostname()} CPUs=2 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n" + (p.read_text()[-2000:] if p.exists() else "(none)") for p in logs)
    raise RuntimeError(f"one-node SLURM: {what} not ready after {timeout:.0f} s\n{tails}")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(40):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.25)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def one_node_slurm(root: str | os.PathLike, timeout: float = 120.0):
    """Start munged + slurmctld + slurmd under ``root``; yields ``{"SLURM_CONF": ...}``; stops them after."""
    root = Path(root).absolute()
    for d in ("state", "spool"):
        (root / d).mkdir(parents=True, exist_ok=True)
    node = "jtlnode"
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, node))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = [root / "munged.log", root / "slurmctld.log", root / "slurmd.log"]
    pids: list[Path] = []
    try:
        subprocess.run(["mungekey", "--create", f"--keyfile={root}/munge.key"], check=True, capture_output=True)
        os.chmod(root / "munge.key", 0o600)
        subprocess.run(["munged", "--force", f"--socket={root}/munge.socket", f"--key-file={root}/munge.key",
                        f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                        f"--seed-file={root}/munged.seed"], check=True, capture_output=True)
        pids.append(root / "munged.pid")
        subprocess.run(["slurmctld", "-f", str(conf), "-c"], check=True, capture_output=True, env=env)
        pids.append(root / "slurmctld.pid")
        subprocess.run(["slurmd", "-f", str(conf), "-N", node], check=True, capture_output=True, env=env)
        pids.append(root / "slurmd.pid")

        def idle() -> bool:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env)
            return r.returncode == 0 and r.stdout.strip() in ("idle", "mixed", "allocated")

        _wait(idle, timeout, "node idle", logs)
        yield {"SLURM_CONF": str(conf)}
    finally:
        for p in reversed(pids):
            _stop(_pid(p))
