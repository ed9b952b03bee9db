"""``jtl sweep --shard I/N`` and ``--devices-per-group``: each run trained exactly once, numbers equal to the
unsharded sweep trained in one process (the reference)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from train_helpers import one_line_error, run_jtl

from jtl.sweep.runner import expand, run_sweep
from jtl.sweep.devices import worker_env
from jtl.sweep.shard import assign, parse_shard

SWEEP = '''
import sys
sys.path.insert(0, {tests!r})
from train_helpers import tiny_config

def get_config(arg=None):
    return tiny_config(total_steps=6).to_dict()

def get_sweep(arg=None):
    if arg == "one":
        return [{{"batch_size": 16}}]
    if arg == "pairs":
        return [{{**extra, "optim.lr": lr}} for extra in ({{}}, {{"total_steps": 8}}) for lr in (0.05, 0.1)]
    return [{{"optim.lr": 0.05}}, {{"optim.lr": 0.1}}, {{"batch_size": 16}}]  # groups of 2 and 1
'''
TIMING = ("train/images_per_s",)


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("shard") / "shard_sweep.py"
    path.write_text(textwrap.dedent(SWEEP.format(tests=os.path.dirname(__file__))))
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "JTL_DATA_DIR": str(tmp_path_factory.getbasetemp() / "data")}


def _numbers(workdir: Path, leave_out=()) -> tuple[list[dict], dict]:
    """Every logged step's metrics (but its speed and ``leave_out``) and the final evaluation."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k not in TIMING + leave_out} for r in rows if "train/loss" in r]
    return rows, json.loads((workdir / "summary.json").read_text())["final"]


def _train(config: str, sweep_dir: Path, env: dict) -> dict:
    """The sweep trained in this process, unsharded: overrides -> numbers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTL_DATA_DIR", env["JTL_DATA_DIR"])
        runs = run_sweep(config, sweep_dir, log=lambda *_: None)
    assert all(r.status == "done" for r in runs)
    return {json.dumps(r.overrides, sort_keys=True): r.workdir for r in runs}


def _jtl(*args):
    return [sys.executable, "-m", "jtl.cli", *map(str, args)]


def _interval(workdir: Path) -> tuple[int, int]:
    """When the run started (its config.json written) and ended (its summary.json written)."""
    return (workdir / "config.json").stat().st_mtime_ns, (workdir / "summary.json").stat().st_mtime_ns


def test_shard_flag_and_assignment():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(Exception, match="I/N"):
            parse_shard(bad)
    sizes = [5, 1, 3, 3, 2, 2, 1, 8]
    shards = assign(sizes, 3)
    assert shards == assign(list(sizes), 3)  # the same in every invocation
    loads = [sum(s for s, k in zip(sizes, shards) if k == i) for i in range(3)]
    # List scheduling bound: no shard exceeds the mean load by more than the largest group.
    assert sum(loads) == sum(sizes) and max(loads) <= sum(sizes) / 3 + max(sizes)
    assert max(loads) == 9  # the optimum for these sizes (25 runs on 3 shards: 9, 8, 8)
    assert assign([2, 2, 1], 2) == [0, 1, 0]


def test_two_shards_at_once_train_every_run_once(sweep_file, env, tmp_path):
    out = tmp_path / "sharded"
    logs = [open(tmp_path / f"shard{i}.log", "w") for i in range(2)]  # noqa: SIM115
    procs = [subprocess.Popen(_jtl("sweep", "--config", sweep_file, "--workdir", out, "--shard", f"{i}/2"),
                              env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
    # The reference, trained here while the shards run: the whole sweep in one process.
    reference = {k: _numbers(w) for k, w in _train(sweep_file, tmp_path / "unsharded", env).items()}
    codes = [p.wait(timeout=900) for p in procs]
    for f in logs:
        f.close()
    assert codes == [0, 0], [(tmp_path / f"shard{i}.log").read_text()[-2000:] for i in range(2)]
    runs = expand(sweep_file, out)
    expected = {0: [0, 1], 1: [2]}  # groups: the two learning rates (2 runs), batch 16 alone (1)
    owner = {r.name: int((r.workdir / ".lock").read_text().split()[1]) for r in runs}
    for shard, idx in expected.items():
        assert {owner[runs[i].name] for i in idx} == {procs[shard].pid}
    for r in runs:
        rows, _ = _numbers(r.workdir)
        assert [row["step"] for row in rows] == list(range(1, r.cfg.total_steps + 1))  # trained once, from step 1
        assert json.loads((r.workdir / "summary.json").read_text())["resumed_from"] is None
        assert _numbers(r.workdir) == reference[json.dumps(r.overrides, sort_keys=True)]
    # The two processes trained at the same time.
    spans = [[_interval(runs[i].workdir) for i in idx] for idx in expected.values()]
    assert min(s for s, _ in spans[0]) < max(e for _, e in spans[1]) and min(s for s, _ in spans[1]) < max(e for _, e in spans[0])
    # A rerun of either shard finds nothing left to train.
    rc, log, _ = run_jtl("sweep", "--config", sweep_file, "--workdir", out, "--shard", "1/2")
    assert rc == 0 and "0 to train" in log


def test_a_run_locked_by_another_process_is_left_alone(sweep_file, env, tmp_path):
    out = tmp_path / "locked"
    (run,) = expand(f"{sweep_file}:one", out)
    run.workdir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid 1 on elsewhere'); f.flush(); print('locked', flush=True); time.sleep(600)"),
        str(run.workdir / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, log, err = run_jtl("sweep", "--config", f"{sweep_file}:one", "--workdir", out, "--shard", "0/1")
        assert rc == 1 and "1 busy in another process" in log, log + err
        assert not (run.workdir / "failed.json").exists() and not (run.workdir / "summary.json").exists()
        rc, listed, _ = run_jtl("sweep", "--config", f"{sweep_file}:one", "--workdir", out, "--list")
        assert f"{run.name}  running" in listed and "pid 1 on elsewhere" in listed, listed
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("flag", ["--shard=2/2", "--devices-per-group=0"])
def test_bad_flags_are_one_line(sweep_file, tmp_path, flag):
    one_line_error(run_jtl("sweep", "--config", sweep_file, "--workdir", tmp_path / "x", flag), flag.split("=")[0])
    assert not (tmp_path / "x").exists()


def test_worker_devices_are_disjoint():
    cpu = worker_env("cpu", 1, 2, 4, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_foo=1"})
    assert cpu["XLA_FLAGS"].split() == ["--xla_cpu_foo=1", "--xla_force_host_platform_device_count=2"]
    assert [worker_env("cuda", s, 2, 8, {})["CUDA_VISIBLE_DEVICES"] for s in range(4)] == ["0,1", "2,3", "4,5", "6,7"]
    # Devices already restricted: the workers split the visible ones.
    visible = {"CUDA_VISIBLE_DEVICES": "3,5,6,7"}
    assert [worker_env("gpu", s, 1, 4, visible)["CUDA_VISIBLE_DEVICES"] for s in range(4)] == ["3", "5", "6", "7"]
    assert worker_env("rocm", 1, 1, 2, {})["ROCR_VISIBLE_DEVICES"] == "1"
    with pytest.raises(Exception, match="--shard"):
        worker_env("tpu", 0, 1, 4, {})


@pytest.mark.slow
def test_devices_per_group_runs_groups_side_by_side(sweep_file, env, tmp_path):
    """Two groups at once on 4 CPU devices, 2 each: a group's two members are sharded over its two devices."""
    out = tmp_path / "devices"
    four = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run(_jtl("sweep", "--config", f"{sweep_file}:pairs", "--workdir", out, "--devices-per-group", 2),
                       env=four, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "2 groups at a time, 2 of the 4 cpu devices each" in r.stdout, r.stdout
    reference = _train(f"{sweep_file}:pairs", tmp_path / "one_device", env)  # one device, one group at a time
    runs = expand(f"{sweep_file}:pairs", out)
    for run in runs:
        assert len(json.loads((run.workdir / "run_info.json").read_text())["devices"]) == 2
        ref = reference[json.dumps(run.overrides, sort_keys=True)]
        # Equal numbers; the gradient norm (a diagnostic reduced over the sharded member axis) to an ulp.
        assert _numbers(run.workdir, ("train/grad_norm",)) == _numbers(ref, ("train/grad_norm",))
        norms = [[row["train/grad_norm"] for row in _numbers(w)[0]] for w in (run.workdir, ref)]
        np.testing.assert_allclose(*norms, rtol=1e-6)
    (a0, a1), (b0, b1) = [_interval(run.workdir) for run in runs[:2]], [_interval(run.workdir) for run in runs[2:]]
    assert min(a0[0], a1[0]) < max(b0[1], b1[1]) and min(b0[0], b1[0]) < max(a0[1], a1[1])  # at the same time
