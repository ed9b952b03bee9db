"""`jtl train | eval | predict` end to end, and their one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from train_helpers import config_file_text

CONFIG = config_file_text(steps=6, every=3, log_every=3)


@pytest.fixture
def env(tmp_path):
    return {"JTL_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(CONFIG)
    return path


def _one_line_error(r, pattern):
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("jtl: error:")]
    assert len(lines) == 1 and pattern in lines[0], r.stderr[-2000:]


def test_train_eval_predict(jtl_cli, tmp_path, config_file, env):
    wd = tmp_path / "run"
    r = jtl_cli("train", "--config", f"{config_file}:6", "--workdir", wd, "--config.optim.lr=0.1", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val: top1" in r.stdout
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["optim"]["lr"] == 0.1 and cfg["total_steps"] == 6
    summary = json.loads((wd / "summary.json").read_text())

    r = jtl_cli("eval", "--workdir", wd, "--split", "val", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["step"] == 6 and out["top1"] == pytest.approx(summary["final"]["val"]["top1"])
    r = jtl_cli("eval", "--workdir", wd, "--split", "digits:test", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["count"] > 300

    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(p)
        paths.append(p)
    r = jtl_cli("predict", "--workdir", wd, "--top-k", "2", *paths, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(str(p) in ln for p, ln in zip(paths, lines))
    probs = [float(x.split()[-1]) for x in lines[0].split(": ", 1)[1].split(", ")]
    assert len(probs) == 2 and probs[0] >= probs[1] and 0 <= sum(probs) <= 1.0001


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--config.optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
        (["--config.batch_size=abc"], "config key 'batch_size' must be int"),
        (["--config.optim.lr=-1.0"], "optim.lr must be a finite non-negative number"),
        (["--config.model.name=resnet19"], "unknown architecture 'resnet19'"),
        (["--config.data.train=nonexistent_dataset"], "nonexistent_dataset"),
    ],
)
def test_train_errors(jtl_cli, tmp_path, config_file, env, args, pattern):
    r = jtl_cli("train", "--config", config_file, "--workdir", tmp_path / "run", *args, env=env)
    _one_line_error(r, pattern)


def test_missing_config_and_not_a_run(jtl_cli, tmp_path, env):
    _one_line_error(jtl_cli("train", "--config", tmp_path / "nope.py", "--workdir", tmp_path / "w", env=env),
                    "config file not found")
    _one_line_error(jtl_cli("eval", "--workdir", tmp_path, "--split", "val", env=env), "not a jtl run directory")


def test_predict_unreadable_image(jtl_cli, tmp_path, config_file, env):
    wd = tmp_path / "run"
    assert jtl_cli("train", "--config", f"{config_file}:3", "--workdir", wd, env=env).returncode == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    _one_line_error(jtl_cli("predict", "--workdir", wd, bad, env=env), f"{bad}: not a readable image")
