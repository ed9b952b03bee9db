"""Class identity by name, runs usable from their directory alone, one run per workdir.

The image folders are made here: ``A`` (classes a, b, c; the training set), ``E`` (A's b
and c images only: class a missing), ``Z`` (A's images with an empty ``a/``) and ``X``
(an extra class d). Labels are checked against the directory names of the files.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jtl import data as jdata
from jtl.data.classes import RunClasses
from jtl.errors import DataError
from train_helpers import one_line_error, run_jtl

REPO = Path(__file__).resolve().parents[1]
COLORS = {"a": (220, 40, 40), "b": (40, 220, 40), "c": (40, 40, 220)}


def _folder(root: Path, classes: dict, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, color in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n if color is not None else 0):
            x = np.clip(rng.normal(color, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(x).save(root / name / f"{name}{i}.png")
    return root


def _cli(*args) -> tuple[int, str, str]:
    return run_jtl(*args)


def _one_line_error(code: int, err: str, *words: str) -> None:
    one_line_error((code, "", err), *words)


CONFIG = """
import ml_collections
def get_config(arg=""):
    recipe, _, rest = arg.partition(",")
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "cifar_resnet8", "num_classes": 3, "init": rest})
    c.data = ml_collections.ConfigDict({"train": "folder:%(A)s", "image_size": 8, "channels": 3,
        "eval": ("e=folder:%(E)s:all", "z=folder:%(Z)s:all"), "augment": ()})
    c.batch_size, c.eval_batch_size, c.total_steps, c.eval_every, c.log_every = 12, 16, 25, 0, 5
    c.optim = ml_collections.ConfigDict({"lr": 0.05, "schedule": "constant", "weight_decay": 0.0})
    c.progress = False
    if recipe == "probe":
        c.recipe = "linear_probe"
    if recipe == "adapt":
        c.adapt = ml_collections.ConfigDict({"target": "folder:%(Z)s", "bottleneck_dim": 16, "disc_hidden": 16})
        c.loss = (("ce", 1.0), ("dann", 0.3))
        c.optim.groups = (("all", r".", 1.0),)
    return c
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    a = _folder(root / "A", COLORS)
    e = root / "E"
    for c in ("b", "c"):
        shutil.copytree(a / c, e / c)
    z = root / "Z"
    shutil.copytree(a, z)
    shutil.rmtree(z / "a")
    (z / "a").mkdir()
    x = _folder(root / "X", {**COLORS, "d": (128, 128, 128)}, n=2)
    cfg = root / "cfg.py"
    cfg.write_text(CONFIG % {"A": a, "E": e, "Z": z})
    runs, logs = {}, {}
    for name, arg in (("ft", "ft"), ("lp", f"probe,{root / 'ft'}"), ("da", f"adapt,{root / 'ft'}")):
        code, out, err = _cli("train", "--config", f"{cfg}:{arg}", "--workdir", root / name)
        assert code == 0, err[-3000:]
        runs[name], logs[name] = root / name, out
    return {"root": root, "A": a, "E": e, "Z": z, "X": x, "runs": runs, "logs": logs}


def test_align_maps_labels_by_class_name(world):
    run = RunClasses(("a", "b", "c"))
    for folder in ("E", "Z"):
        src = run.align(jdata.load(f"folder:{world[folder]}", "all", val_fraction=0))
        by_dir = [("a", "b", "c").index(Path(f).parent.name) for f in src.files]
        np.testing.assert_array_equal(src.labels, by_dir)
        assert set(src.labels) == {1, 2}
    assert jdata.info(f"folder:{world['Z']}").class_names == ("a", "b", "c")  # the empty a/ is a class
    with pytest.raises(DataError, match="'d'"):
        run.align(jdata.load(f"folder:{world['X']}", "all", val_fraction=0))
    # data.classes left "a" out of the training set: its examples are dropped, not an error
    src = RunClasses(("b", "c"), excluded=("a",)).align(jdata.load(f"folder:{world['A']}", "all", val_fraction=0))
    np.testing.assert_array_equal(src.labels, [("b", "c").index(Path(f).parent.name) for f in src.files])


def test_partial_eval_sets_keep_labels_on_names(world):
    from jtl.train.inference import RunModel

    run = RunModel(world["runs"]["ft"])
    assert run.classes.names == ("a", "b", "c")
    final = json.loads((world["runs"]["ft"] / "summary.json").read_text())["final"]
    files = sorted(world["E"].glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(f)) for f in files])
    preds = run.logits(x).argmax(-1)
    truth = np.asarray([("a", "b", "c").index(f.parent.name) for f in files])
    assert (preds == truth).mean() > 0.9  # the colours are easy: the test below is not vacuous
    for label in ("e", "z"):  # E lacks a/, Z has it empty: the same images, the same labels
        assert final[label]["top1"] == pytest.approx((preds == truth).mean())
        assert final[label]["class_support"] == [0, 12, 12]


def test_mismatched_class_names_are_refused(world):
    code, _, err = _cli("eval", "--workdir", world["runs"]["ft"], "--split", f"folder:{world['X']}:all")
    _one_line_error(code, err, "'d'", "class")


def test_runs_record_classes_and_report_what_happens(world):
    for name in ("ft", "lp", "da"):
        facts = json.loads((world["runs"][name] / "run.json").read_text())
        assert facts["classes"] == ["a", "b", "c"], name
        assert facts["normalization"]["image_size"] == 8
        log = world["logs"][name]
        assert "jtl: step 25/25: e top1" in log, log
        summary = json.loads((world["runs"][name] / "summary.json").read_text())
        assert summary["time_to_first_step_s"] >= summary["first_step_s"] > 0
    assert "model.init" in world["logs"]["lp"] or "extracting features" in world["logs"]["lp"]
    assert "re-initialised" in world["logs"]["da"] and "loaded" in world["logs"]["da"]
    assert (world["runs"]["lp"] / "backbone.npz").exists()


def _can_mount_read_only(d: Path) -> bool:
    cmd = f"mount --bind {d} {d} && mount -o remount,bind,ro {d} {d}"
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True).returncode == 0


def _read_only(cmd: list, dirs: list) -> tuple[subprocess.CompletedProcess, bool]:
    """Run ``cmd`` with ``dirs`` read-only: a private read-only mount as root, else ``chmod -R a-w``.
    Also says whether writes were really impossible (root ignores permission bits)."""
    env = {**os.environ, "JTL_COMPILATION_CACHE": "0"}
    if os.geteuid() != 0 or not _can_mount_read_only(dirs[0]):
        for d in dirs:
            subprocess.run(["chmod", "-R", "a-w", str(d)], check=True)
        return subprocess.run(cmd, capture_output=True, text=True, env=env), os.geteuid() != 0
    mounts = " && ".join(f"mount --bind {d} {d} && mount -o remount,bind,ro {d} {d}" for d in dirs)
    return subprocess.run(["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *map(str, cmd)],
                          capture_output=True, text=True, env=env), True


EVAL_ALL = r"""
import contextlib, io, json, sys
from jtl.cli import main
out = {}
for wd in sys.argv[2:]:
    for args in (["eval", "--workdir", wd, "--split", "e"], ["predict", "--workdir", wd, "--top-k", "2", sys.argv[1]]):
        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            code = main(args)
        out[wd + ":" + args[0]] = [code, buf.getvalue(), err.getvalue()]
print(json.dumps(out))
"""


def test_eval_and_predict_need_only_the_run_directory(world, tmp_path):
    image = tmp_path / "c.png"
    shutil.copy(next((world["E"] / "c").iterdir()), image)
    gone = world["root"] / "A.moved"
    world["A"].rename(gone)  # the training data is gone
    try:
        runs = [world["runs"][n] for n in ("ft", "lp", "da")]
        r, enforced = _read_only([sys.executable, "-c", EVAL_ALL, image, *runs], runs)
        assert r.returncode == 0, r.stderr[-3000:]
        results = json.loads(r.stdout.strip().splitlines()[-1])
        for wd in runs:
            code, out, err = results[f"{wd}:eval"]
            assert code == 0, err
            got = json.loads(out.strip().splitlines()[-1])
            want = json.loads((wd / "summary.json").read_text())["final"]["e"]
            assert got["top1"] == pytest.approx(want["top1"], abs=1e-6), wd
            assert set(got["per_class_accuracy"]) == {"b", "c"}  # the classes present
            assert "not written" in err or not enforced  # read-only: reported, not a traceback
            code, out, err = results[f"{wd}:predict"]
            assert code == 0 and out.startswith(f"{image}: c "), (wd, out, err)
        assert not enforced or not any(p.name.startswith("eval_") for wd in runs for p in wd.iterdir())
    finally:
        for wd in world["runs"].values():
            subprocess.run(["chmod", "-R", "u+w", str(wd)], check=False)
        gone.rename(world["A"])


def _digits_config(tmp_path, steps: int, every: int) -> Path:
    from train_helpers import config_file_text

    path = tmp_path / "digits_cfg.py"
    path.write_text(config_file_text(steps=steps, every=every, log_every=every))
    return path


def test_one_live_run_per_workdir_and_a_killed_run_resumes(tmp_path):
    cfg, wd = _digits_config(tmp_path, steps=100000, every=2), tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "jtl.cli", "train", "--config", str(cfg), "--workdir", str(wd)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not list((wd / "checkpoints").glob("[0-9]*")):
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
            time.sleep(0.5)
        code, _, err = _cli("train", "--config", cfg, "--workdir", wd)
        _one_line_error(code, err, "in use by a live run", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (wd / ".lock").exists()  # the killed run's lock file is left behind ...
    code, out, err = _cli("train", "--config", f"{cfg}:4", "--workdir", wd)  # ... and does not block
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), steps  # no step logged twice


def test_best_checkpoint_is_the_best_by_the_metric(tmp_path):
    """Kept and restored as ``best``: the step with the highest metric (numpy argmax), not the latest."""
    from jtl.train.checkpoint import Checkpoints, restore_variables

    values = {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.6}
    ck = Checkpoints(tmp_path / "checkpoints", keep=1, best_metric="val/top1", async_save=False)
    for step, v in values.items():
        ck.save(step, {"params": {"w": np.full(2, float(step), np.float32)}, "batch_stats": {}}, {}, {"val/top1": v})
    ck.wait()
    best = max(values, key=values.get)
    assert ck.best_step() == best and sorted(ck.manager.all_steps()) == [best, 4]
    ck.close()
    (tmp_path / "config.json").write_text(json.dumps({"best_metric": "val/top1"}))
    assert restore_variables(tmp_path, "best", strict=True)["step"] == best
    assert restore_variables(tmp_path, "latest")["step"] == 4


def test_eval_best_without_a_best_checkpoint_is_refused(world):
    code, _, err = _cli("eval", "--workdir", world["runs"]["ft"], "--split", "e", "--checkpoint", "best")
    _one_line_error(code, err, "no best checkpoint")


def test_a_batch_larger_than_the_training_set_is_one_line(tmp_path):
    cfg = _digits_config(tmp_path, steps=2, every=0)
    code, _, err = _cli("train", "--config", cfg, "--workdir", tmp_path / "r", "--config.data.limit=20")
    _one_line_error(code, err, "20 examples", "batch_size=32")


def test_print_config_shows_the_resolved_config(tmp_path):
    cfg = _digits_config(tmp_path, steps=7, every=0)
    code, out, _ = _cli("train", "--config", cfg, "--print-config", "--config.optim.lr=0.2")
    assert code == 0
    shown = json.loads(out)
    assert shown["optim"]["lr"] == 0.2 and shown["total_steps"] == 7 and shown["data"]["train"] == "digits"


def test_folder_quick_start_config_holds_out_its_own_split(world):
    from jtl.config import load_config

    cfg = load_config(f"{REPO}/configs/folder.py:{world['A']}")
    assert cfg.data.train == f"folder:{world['A']}" and cfg.data.eval == (f"val=folder:{world['A']}:val",)
    assert cfg.model.num_classes == 3 and cfg.data.val_fraction == 0.2 and cfg.best_metric == "val/top1"
    scratch = load_config(f"{REPO}/configs/folder.py:{world['A']},scratch")
    assert scratch.model.init == "" and scratch.data.normalize == "dataset"


def test_a_run_from_before_run_json_still_evaluates(world, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(world["runs"]["ft"], old)
    (old / "run.json").unlink()
    code, out, err = _cli("eval", "--workdir", old, "--split", "e")
    assert code == 0, err
    want = json.loads((old / "summary.json").read_text())["final"]["e"]["top1"]
    assert json.loads(out.strip().splitlines()[-1])["top1"] == pytest.approx(want, abs=1e-6)
    assert "older run" in out


def test_resuming_with_other_training_classes_is_refused(tmp_path):
    root = _folder(tmp_path / "data", COLORS, n=4)
    cfg = tmp_path / "cfg.py"
    cfg.write_text(CONFIG % {"A": root, "E": root, "Z": root})
    args = ("train", "--config", f"{cfg}:ft", "--workdir", tmp_path / "run", "--config.batch_size=6",
            "--config.eval_batch_size=6")
    code, _, err = _cli(*args, "--config.total_steps=2")
    assert code == 0, err
    (root / "b").rename(root / "bee")  # the training folder's classes changed
    code, _, err = _cli(*args, "--config.total_steps=4")
    _one_line_error(code, err, "was trained on classes", "'bee'")


@pytest.mark.parametrize("k", [0, -1])
def test_predict_top_k_must_be_positive(world, k):
    image = next((world["E"] / "b").iterdir())
    code, out, err = _cli("predict", "--workdir", world["runs"]["ft"], "--top-k", k, image)
    _one_line_error(code, err, "--top-k must be at least 1", str(k))
    assert out == ""


def test_on_error_skip_reaches_jtl_train(tmp_path):
    root = _folder(tmp_path / "data", COLORS, n=4)
    (root / "a" / "broken.png").write_bytes(b"not a png")
    cfg = tmp_path / "cfg.py"
    cfg.write_text(CONFIG % {"A": root, "E": root / "..", "Z": root})
    args = ("train", "--config", f"{cfg}:ft", "--config.batch_size=6", "--config.total_steps=2",
            "--config.data.eval=()")
    code, _, err = _cli(*args, "--workdir", tmp_path / "r1")
    _one_line_error(code, err, "broken.png", "--config.data.on_error=skip")
    with pytest.warns(UserWarning, match="broken.png"):
        code, _, err = _cli(*args, "--workdir", tmp_path / "r2", "--config.data.on_error=skip")
    assert code == 0, err
