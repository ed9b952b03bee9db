"""Crash safety: SIGKILL at seeded random moments -- during start-up, between steps, and while an
async checkpoint is being written -- then the same command again, until the run completes.

Every restart must resume by itself from the newest complete checkpoint (never a half-written one),
and the final parameters must equal an uninterrupted run's bitwise (CPU). The 10 kills of
the issue run in the default suite (about 90 s on 2 loaded cores).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from jtl.train.checkpoint import restore_variables
from train_helpers import RUN_SCRIPT, tiny_config, train_in_subprocess

STEPS = 48


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def _config():
    return tiny_config(total_steps=STEPS, checkpoint_every=4, keep_checkpoints=2, eval_every=8, log_every=1)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    os.environ.setdefault("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
    wd = tmp_path_factory.mktemp("straight") / "run"
    train_in_subprocess(_config(), wd)
    return restore_variables(wd, which="latest")


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _start(workdir: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as err:
        return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, _config().to_json_best_effort(), str(workdir)],
                                stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))


def _logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def _inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _complete_steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def _tmp_checkpoints(workdir: Path) -> list[str]:
    ckpt = workdir / "checkpoints"
    try:
        return [n for n in os.listdir(ckpt) if "tmp" in n]
    except FileNotFoundError:
        return []


def kill_and_resume(workdir: Path, kills: int, seed: int) -> dict:
    """SIGKILL the run ``kills`` times at seeded random moments; returns what happened."""
    rng = random.Random(seed)
    log = workdir.parent / "stderr.log"
    workdir.parent.mkdir(parents=True, exist_ok=True)
    record = {"moments": [], "killed_mid_checkpoint": 0}
    for i in range(kills):
        # Every third kill (and at least one) lands while a checkpoint is being written.
        mode = "checkpoint" if i % 3 == 1 or (kills < 3 and i == 0) else rng.choice(["startup", "steps"])
        resume = (_complete_steps(workdir) or [0])[-1]
        old_log = _inode(workdir / "metrics.jsonl")
        proc = _start(workdir, log)
        deadline = time.time() + 180

        def training(after: int) -> bool:
            """The new process has rewritten the log (resumed) and logged a step beyond ``after``."""
            return _inode(workdir / "metrics.jsonl") not in (None, old_log) and _logged_step(workdir) > after

        def wait(cond, poll):
            while not cond() and proc.poll() is None and time.time() < deadline:
                time.sleep(poll)

        if mode == "startup":  # import, data preparation, restore, compilation
            time.sleep(rng.uniform(0.0, 4.0))
        elif mode == "steps":
            target = min(resume + rng.randint(1, 6), STEPS - 4)
            wait(lambda: training(target - 1), 0.002)
            time.sleep(rng.uniform(0.0, 0.03))
        else:  # the next checkpoint's temporary directory appears: orbax is writing it
            wait(lambda: training(resume), 0.002)
            wait(lambda: bool(_tmp_checkpoints(workdir)), 0.0005)
        if proc.poll() is not None:
            pytest.fail(f"kill {i} ({mode}): the run ended before it was killed:\n{log.read_text()[-3000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = _tmp_checkpoints(workdir)
        record["killed_mid_checkpoint"] += bool(left) and mode == "checkpoint"
        record["moments"].append((mode, resume, _logged_step(workdir), left))
    r = subprocess.run([sys.executable, "-c", RUN_SCRIPT, _config().to_json_best_effort(), str(workdir)],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    record["final_stderr"] = r.stderr
    return record


def _check(workdir: Path, straight: dict, record: dict) -> None:
    assert record["killed_mid_checkpoint"] >= 1, record["moments"]  # a half-written checkpoint was left behind
    assert not _tmp_checkpoints(workdir)  # ... and cleaned up by a restart, never restored
    assert "checkpoints.corrupt" not in os.listdir(workdir)  # no kill produced a damaged complete checkpoint
    b = restore_variables(workdir, which="latest")
    assert b["step"] == straight["step"] == STEPS
    for part in ("params", "batch_stats"):
        fa, fb = _flat(straight[part]), _flat(b[part])
        assert all(fa[k].tobytes() == fb[k].tobytes() for k in fa), part
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step logged once
    assert json.loads((workdir / "summary.json").read_text())["step"] == STEPS


def test_ten_random_kills_resume_bitwise(straight, tmp_path):
    """About 90 s here (2 loaded cores): the issue's 10 kills run in the default suite."""
    record = kill_and_resume(tmp_path / "run", kills=10, seed=1)
    _check(tmp_path / "run", straight, record)
