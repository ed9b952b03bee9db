"""``jtl sweep --launcher slurm`` on a real one-node SLURM (Debian's slurm-wlm + munge, tests/slurm_cluster.py).

The reference is the same sweep trained locally, in this process: per run, every logged
step's metrics and the final evaluation must be equal, also for the group whose job is
cancelled mid-training and resumed by a rerun of the sweep. Bad input (unknown partition,
no sbatch, no submitit) is one line, exit 2, nothing submitted and nothing written.
"""

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import slurm_cluster
from train_helpers import one_line_error, run_jtl

from jtl.sweep.runner import expand, run_sweep

SWEEP = '''
import sys
sys.path.insert(0, {tests!r})
from train_helpers import tiny_config

def get_config(arg=None):
    return tiny_config(total_steps=12).to_dict()

def get_sweep(arg=None):
    # Two vectorized groups of two: the second runs longer and checkpoints every step,
    # so that its job can be cancelled between two checkpoints.
    slow = {{"total_steps": 40, "checkpoint_every": 1, "keep_checkpoints": 2}}
    if arg == "slow":
        return [{{**slow, "optim.lr": lr}} for lr in (0.05, 0.1)]
    return [{{**extra, "optim.lr": lr}} for extra in ({{}}, slow) for lr in (0.05, 0.1)]

def get_slurm(arg=None):
    return {{"cpus_per_job": 1, "time_min": 30}}
'''
TIMING = ("train/images_per_s", "wall_time_s", "time_to_first_step_s", "first_step_s", "resumed_from")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "slurm_sweep.py"
    path.write_text(textwrap.dedent(SWEEP.format(tests=os.path.dirname(__file__))))
    return str(path)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    reason = slurm_cluster.missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with slurm_cluster.one_node_slurm(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def _squeue(env) -> dict[str, str]:
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, env={**os.environ, **env})
    return dict(line.split("|") for line in r.stdout.split())


def _wait(predicate, timeout: float, what: str):
    t = time.monotonic()
    while not predicate():
        assert time.monotonic() - t < timeout, f"{what} after {timeout:.0f} s"
        time.sleep(0.1)


def _numbers(workdir: Path) -> tuple[list[dict], dict]:
    """Every logged step's metrics and the final evaluation (timings left out)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in rows if "train/loss" in r]
    return rows, json.loads((workdir / "summary.json").read_text())["final"]


def _table(sweep_dir: Path) -> list[list[str]]:
    """``jtl collect``'s table (csv) without its wall-time column."""
    rc, out, err = run_jtl("collect", sweep_dir, "--format", "csv")
    assert rc == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    keep = [i for i, h in enumerate(rows[0]) if "wall" not in h]
    assert len(keep) < len(rows[0]) and len(rows) > 4, out  # the header, a row per setting, the selections
    return [[row[i] for i in keep] for row in rows]


def test_slurm_sweep_equals_local_and_resumes_a_cancelled_job(slurm_env, sweep_file, tmp_path, monkeypatch):
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "slurm"
    rc, log, err = run_jtl("sweep", "--config", sweep_file, "--workdir", out, "--launcher", "slurm")
    assert rc == 0 and "4 to submit as 2 jobs" in log, log + err
    # The reference: the same sweep trained here, while the jobs run.
    local_log = open(tmp_path / "local.log", "w")  # noqa: SIM115 - closed by the child's end
    local = subprocess.Popen([sys.executable, "-m", "jtl.cli", "sweep", "--config", sweep_file, "--workdir",
                              tmp_path / "local"], stdout=local_log, stderr=subprocess.STDOUT)
    runs = expand(sweep_file, tmp_path / "local")
    jobs = json.loads((out / "sweep.json").read_text())["jobs"]
    slow = [r.name for r in runs if r.cfg.total_steps == 40]
    first_job = jobs[slow[0]]
    assert len(set(jobs.values())) == 2 and jobs[slow[1]] == first_job

    # Cancel the long group's job once it has written a checkpoint, well before its 40 steps.
    ckpts = out / slow[0] / "checkpoints"
    _wait(lambda: ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()), 600, "no checkpoint")
    subprocess.run(["scancel", first_job], check=True)
    _wait(lambda: first_job not in _squeue(slurm_env), 120, "the cancelled job is still queued")
    assert not any((out / n / "summary.json").exists() for n in slow), "the job finished before scancel took effect"
    rc, listed, _ = run_jtl("sweep", "--config", sweep_file, "--workdir", out, "--list")
    status = {line.split()[0]: line.split()[1] for line in listed.splitlines()[1:]}
    assert all(status[n] == "stopped" for n in slow) and "checkpoint at step" in listed, listed

    # The rerun resubmits the cancelled group only (the other is finished or queued) and waits for it.
    rc, log, err = run_jtl("sweep", "--config", sweep_file, "--workdir", out, "--launcher", "slurm", "--wait")
    assert rc == 0, log + err
    assert "2 to submit as 1 jobs" in log and "4 runs: 4 done" in log, log
    jobs_after = json.loads((out / "sweep.json").read_text())["jobs"]
    assert jobs_after[slow[0]] != first_job and {n: jobs_after[n] for n in jobs if n not in slow} == \
        {n: jobs[n] for n in jobs if n not in slow}

    assert local.wait(timeout=900) == 0, (tmp_path / "local.log").read_text()[-3000:]
    local_log.close()
    for r in runs:
        summary = json.loads((out / r.name / "summary.json").read_text())
        if r.name in slow:  # resumed from a checkpoint of the cancelled job, not restarted
            # (as one vectorized program, or one by one if the kill fell between the members' saves)
            assert 1 <= summary["resumed_from"] < 40, summary["resumed_from"]
        else:
            assert summary["resumed_from"] is None and summary["vectorized_members"] == 2
        got, want = _numbers(out / r.name), _numbers(r.workdir)
        if r.name in slow and summary.get("vectorized_members") != 2:
            # Resumed one run at a time (the kill fell between the members' saves) against the local
            # vectorized group: the global gradient norm sums the same squares in another order
            # (seen: 1e-7 relative); every loss, accuracy and evaluation stays exactly equal.
            norms = [(a.pop("train/grad_norm"), b.pop("train/grad_norm")) for a, b in zip(got[0], want[0])]
            np.testing.assert_allclose(*zip(*norms), rtol=1e-6, err_msg=r.name)
        assert got == want, r.name
    assert _table(out) == _table(tmp_path / "local")


@pytest.mark.slow
def test_usr2_requeues_the_job_which_resumes(slurm_env, sweep_file, tmp_path, monkeypatch):
    """What SLURM sends before a time limit or at pre-emption: submitit requeues the same job id,
    and the requeued job resumes the group from its checkpoints, with the numbers of a run never stopped."""
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    config, out = f"{sweep_file}:slow", tmp_path / "slurm"
    rc, log, err = run_jtl("sweep", "--config", config, "--workdir", out, "--launcher", "slurm")
    assert rc == 0 and "2 to submit as 1 jobs" in log, log + err
    local = run_sweep(config, tmp_path / "local", log=lambda *_: None)
    job = json.loads((out / "sweep.json").read_text())["jobs"][local[0].name]
    ckpts = out / local[0].name / "checkpoints"
    _wait(lambda: ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()), 600, "no checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _wait(lambda: job not in _squeue(slurm_env), 900, "the job did not finish")
    logs = "".join(p.read_text() for p in (out / "slurm").glob(f"{job}/*log.*"))
    assert "requeu" in logs.lower(), logs[-3000:]
    assert json.loads((out / "sweep.json").read_text())["jobs"][local[0].name] == job  # not resubmitted
    for r in local:
        assert 1 <= json.loads((out / r.name / "summary.json").read_text())["resumed_from"] < 40
        assert _numbers(out / r.name) == _numbers(r.workdir), r.name


def test_unknown_partition_submits_nothing(slurm_env, sweep_file, tmp_path, monkeypatch):
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    before = _squeue(slurm_env)
    result = run_jtl("sweep", "--config", sweep_file, "--workdir", tmp_path / "p", "--launcher", "slurm",
                     "--partition", "nope")
    one_line_error(result, "unknown SLURM partition 'nope'", slurm_cluster.PARTITION)
    assert _squeue(slurm_env) == before and not (tmp_path / "p").exists()


def test_no_sbatch_is_one_line(sweep_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    result = run_jtl("sweep", "--config", sweep_file, "--workdir", tmp_path / "s", "--launcher", "slurm")
    one_line_error(result, "sbatch not found", alone=True)
    assert not (tmp_path / "s").exists()


def test_no_submitit_is_one_line(sweep_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    result = run_jtl("sweep", "--config", sweep_file, "--workdir", tmp_path / "s", "--launcher", "slurm")
    one_line_error(result, "pip install submitit", alone=True)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, message", [
    (["--launcher", "slurm", "--sbatch", "qos"], "is not KEY=VALUE"),
    (["--launcher", "slurm", "--time", "0"], "time_min must be a positive integer"),
    (["--partition", "gpu"], "add --launcher slurm"),
    (["--launcher", "slurm", "--shard", "0/2"], "drop --shard"),
])
def test_bad_slurm_flags_are_one_line(sweep_file, tmp_path, args, message):
    result = run_jtl("sweep", "--config", sweep_file, "--workdir", tmp_path / "s", *args)
    one_line_error(result, message)
    assert not (tmp_path / "s").exists()


def test_options_map_to_sbatch_flags(sweep_file):
    """Flags win over get_slurm(); each lands in submitit's sbatch script as the documented flag."""
    from jtl.sweep.slurm import import_submitit, options, parse_sbatch_flags

    import_submitit()  # without its logging set-up, which would close pytest's handlers
    from submitit.slurm.slurm import _make_sbatch_string

    opts = options(sweep_file, {"partition": "gpu", "gpus_per_job": 2, "mem_gb": 8, "array_parallelism": 3,
                                "sbatch": parse_sbatch_flags(["qos=high", "--constraint=a100"])})
    assert (opts.cpus_per_job, opts.time_min) == (1, 30)  # from get_slurm()
    script = _make_sbatch_string(command="true", folder="/tmp/x/%j", map_count=5,
                                 **opts.executor_parameters("jtl-x"))
    for line in ["--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=1", "--mem=8192M", "--time=30",
                 "--array=0-4%3", "--qos=high", "--constraint=a100", "--signal=USR2@90", "--job-name=jtl-x"]:
        assert f"#SBATCH {line}" in script, (line, script)
