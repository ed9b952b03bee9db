"""Small configs and subprocess runners shared by the trainer tests."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from jtl.config import resolve


def tiny_config(**overrides):
    """cifar_resnet8 on scikit-learn digits (8x8): a full run compiles and trains in seconds."""
    base = {
        "model": {"name": "cifar_resnet8", "num_classes": 10},
        "data": {"train": "digits", "train_split": "train", "eval": ("val=digits:val",), "image_size": 8,
                 "channels": 1, "normalize": "dataset", "augment": ()},
        "batch_size": 32,
        "eval_batch_size": 64,
        "total_steps": 10,
        "eval_every": 0,
        "checkpoint_every": 0,
        "log_every": 1,
        "progress": False,
        "optim": {"lr": 0.05, "schedule": "constant", "weight_decay": 0.0},
    }
    return resolve(with_overrides(base, overrides))


def with_overrides(base: dict, overrides: dict) -> dict:
    """Set dotted keys (``"optim.lr"``) of a nested config dict."""
    for key, value in overrides.items():
        node = base
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return base


RUN_SCRIPT = r"""
import json, sys
from jtl.config import resolve
from jtl.train import train
cfg = resolve(json.loads(sys.argv[1]))
train(cfg, sys.argv[2])
"""


def train_in_subprocess(cfg, workdir, *, devices: int | None = None, wait=True, env=None):
    """Run ``train(cfg, workdir)`` in a fresh Python (optionally with N forced host devices)."""
    env = {**os.environ, **(env or {})}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, "-c", RUN_SCRIPT, cfg.to_json_best_effort(), str(workdir)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def config_file_text(*, steps: int, every: int, log_every: int, keep: int | None = None) -> str:
    """A config file (cifar_resnet8 on digits, 8 px) for the CLI tests: ``steps`` by default
    (``:ARG`` overrides), evaluation and checkpoints every ``every`` steps."""
    keep_line = f"    c.keep_checkpoints = {keep}\n" if keep is not None else ""
    return f"""
import ml_collections
def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = {{"name": "cifar_resnet8", "num_classes": 10}}
    c.data = {{"train": "digits", "eval": ("val=digits:val",), "image_size": 8, "channels": 1,
              "normalize": "dataset", "augment": ()}}
    c.batch_size, c.eval_batch_size, c.total_steps = 32, 64, int(arg or {steps})
    c.eval_every, c.checkpoint_every, c.log_every, c.progress = {every}, {every}, {log_every}, False
{keep_line}    c.optim = {{"lr": 0.05, "schedule": "constant"}}
    return c
"""


def run_jtl(*args) -> tuple[int, str, str]:
    """``jtl ARGS`` in this process: (exit status, stdout, stderr)."""
    from jtl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def one_line_error(result, *patterns: str, alone: bool = False) -> str:
    """Exit 2, no traceback, exactly one ``jtl: error:`` line, containing every pattern (``alone``:
    and nothing else on stderr). Returns that line."""
    rc, _, err = result
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("jtl: error:")]
    assert len(lines) == 1 and all(p in lines[0] for p in patterns), err[-2000:]
    if alone:
        assert len(err.strip().splitlines()) == 1, err[-3000:]
    return lines[0]
