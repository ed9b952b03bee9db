"""``--devices-per-group D``: a sweep's independent groups side by side on disjoint devices of one host.

A host with N accelerators runs N // D worker processes at once, each seeing only its own D
devices (``CUDA_VISIBLE_DEVICES`` / ``ROCR_VISIBLE_DEVICES``; on CPU,
``--xla_force_host_platform_device_count=D``), and hands each free worker the next group.
Within a worker a vectorized group is sharded over its D devices along the member axis, as
in any run (:class:`jtl.train.vector.VectorTrainer`). So 8 GPUs train 8 small groups at once
with D=1, or 4 larger ones with D=2. The devices are counted in a short-lived subprocess, so
this process never claims accelerator memory the workers need.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from jtl.errors import ConfigError, JtlError
from jtl.sweep import runner
from jtl.train import runinfo

VISIBLE = {"cuda": "CUDA_VISIBLE_DEVICES", "gpu": "CUDA_VISIBLE_DEVICES", "rocm": "ROCR_VISIBLE_DEVICES"}
CPU_COUNT_FLAG = "--xla_force_host_platform_device_count"


def local_devices(env: dict | None = None) -> tuple[str, int]:
    """``(platform, number of local devices)`` as a fresh process with ``env`` sees them."""
    code = "import json, jax; print(json.dumps([jax.default_backend(), jax.local_device_count()]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise JtlError(f"cannot count this host's devices: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    platform, n = json.loads(r.stdout.strip().splitlines()[-1])
    return platform, int(n)


def worker_env(platform: str, slot: int, per_group: int, n_devices: int, environ: dict) -> dict:
    """The environment of worker ``slot``: the devices ``slot*D .. slot*D + D - 1`` of the host, only."""
    env = dict(environ)
    if platform == "cpu":
        flags = re.sub(rf"{CPU_COUNT_FLAG}=\d+", "", env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join([*flags, f"{CPU_COUNT_FLAG}={per_group}"])
        return env
    var = VISIBLE.get(platform)
    if var is None:
        raise ConfigError(f"--devices-per-group supports cpu, cuda and rocm hosts, not {platform}; "
                          "on TPU run one sweep process per device group with --shard I/N")
    visible = env[var].split(",") if env.get(var) else [str(i) for i in range(n_devices)]
    env[var] = ",".join(visible[slot * per_group:(slot + 1) * per_group])
    return env


def run_side_by_side(config: str, sweep_dir: Path, extra: Sequence[str], groups: list[list[runner.Run]],
                     per_group: int, log=print) -> None:
    """Train ``groups`` in worker processes on disjoint sets of ``per_group`` devices; sets each run's status."""
    if per_group < 1:
        raise ConfigError(f"--devices-per-group must be >= 1, got {per_group}")
    if not groups:
        return
    platform, n = local_devices()
    if per_group > n:
        raise ConfigError(f"--devices-per-group {per_group} is more than the {n} {platform} devices of this host")
    slots = n // per_group
    log(f"  {min(slots, len(groups))} groups at a time, {per_group} of the {n} {platform} devices each")
    free: queue.Queue[int] = queue.Queue()
    for s in range(slots):
        free.put(s)

    def work(group: list[runner.Run]) -> None:
        slot = free.get()
        try:
            _run_worker(config, sweep_dir, extra, group, worker_env(platform, slot, per_group, n, dict(os.environ)))
        finally:
            free.put(slot)
        log(f"  {len(group)} runs on devices {slot * per_group}-{(slot + 1) * per_group - 1}: "
            + ", ".join(f"{r.name} {r.status}" for r in group))

    with concurrent.futures.ThreadPoolExecutor(max_workers=slots) as pool:
        for f in [pool.submit(work, g) for g in groups]:
            f.result()


def _run_worker(config: str, sweep_dir: Path, extra: Sequence[str], group: list[runner.Run], env: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="jtl-worker-") as tmp:
        status_file = Path(tmp) / "status.json"
        payload = {"config": config, "sweep_dir": str(sweep_dir), "extra": list(extra),
                   "names": [r.name for r in group], "status_file": str(status_file)}
        code = subprocess.run([sys.executable, "-m", "jtl.sweep.devices", json.dumps(payload)], env=env).returncode
        statuses = json.loads(status_file.read_text()) if status_file.exists() else {}
    for r in group:
        if r.name in statuses:
            r.status, r.error = statuses[r.name]
        elif (r.workdir / "summary.json").exists():
            r.status = "done"
        else:  # the worker died (killed, out of memory) before reporting
            r.status, r.error = "failed", f"its worker process exited with status {code}"
            runinfo.record_failure(r.workdir, JtlError(r.error))


def _worker_main(payload: dict) -> int:
    statuses = runner.train_members(payload["config"], payload["sweep_dir"], payload["extra"], payload["names"])
    runinfo.write_json(payload["status_file"], statuses)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(json.loads(sys.argv[1])))
