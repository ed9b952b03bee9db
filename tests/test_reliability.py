"""Reliability: the bad-input table of docs/reliability.md (one test per row), damaged
checkpoints and data, disk full, reproducibility.

Every row runs the real ``jtl`` entry point (``jtl.cli.main``, in this process to keep
the suite fast) and checks: exit status 2, exactly one ``jtl: error:`` line saying what
is wrong and what to do, no traceback (an exception escaping ``main`` fails the test),
and -- where a run already exists -- that none of its files changed.
"""

import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from jtl.errors import DataError
from jtl.train.checkpoint import CorruptCheckpoint, restore_variables
from jtl.train.loop import DiskFull, Trainer
from train_helpers import config_file_text, one_line_error, run_jtl, tiny_config

CONFIG = config_file_text(steps=4, every=2, log_every=1, keep=3)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.py"
    path.write_text(CONFIG)
    return path


jtl = run_jtl


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_kept(before: dict, root: Path) -> None:
    """Nothing already written was lost or changed (new files may appear)."""
    after = snapshot(root)
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, changed[:5]


def train(cfg_file, workdir, steps=4, *overrides):
    return jtl("train", "--config", f"{cfg_file}:{steps}", "--workdir", workdir, *overrides)


@pytest.fixture(scope="module")
def finished_run(cfg_file, tmp_path_factory):
    """A finished 4-step run: checkpoints 2 and 4, metrics, summary. Copy it before changing it."""
    os.environ.setdefault("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
    wd = tmp_path_factory.mktemp("finished") / "run"
    rc, _, err = train(cfg_file, wd)
    assert rc == 0, err[-3000:]
    return wd


@pytest.fixture(scope="module")
def straight_6(cfg_file, tmp_path_factory):
    """Parameters after 6 uninterrupted steps (what every resumed run must end with)."""
    wd = tmp_path_factory.mktemp("straight") / "run"
    rc, _, err = train(cfg_file, wd, 6)
    assert rc == 0, err[-3000:]
    return restore_variables(wd, which="latest")


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def assert_bitwise(a: dict, b: dict) -> None:
    for part in ("params", "batch_stats"):
        fa, fb = _flat(a[part]), _flat(b[part])
        assert fa.keys() == fb.keys()
        assert all(fa[k].tobytes() == fb[k].tobytes() for k in fa), part


# ----------------------------------------------------------------------------- config rows

CONFIG_ROWS = {
    "unknown_key": (["--config.optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
    "wrong_type": (["--config.batch_size=abc"], "config key 'batch_size' must be int, got str"),
    "negative_lr": (["--config.optim.lr=-1.0"], "optim.lr must be a finite non-negative number, got -1.0"),
    "nan_lr": (["--config.optim.lr=nan"], "optim.lr must be a finite non-negative number, got nan"),
    "inf_lr": (["--config.optim.lr=1e999"], "optim.lr must be a finite non-negative number, got inf"),
    "zero_batch": (["--config.batch_size=0"], "batch_size must be positive, got 0"),
    "override_without_value": (["--config.batch_size"], "is not KEY=VALUE"),
    "unknown_optimizer": (["--config.optim.name=lion"], "optim.name must be sgd, adam or adamw"),
    "unknown_architecture": (["--config.model.name=resnet19"], "unknown architecture 'resnet19'"),
    "invalid_regex": (['--config.freeze=("[",)'], "freeze: '[' is not a valid regular expression"),
    "parameter_in_no_group": (['--config.optim.groups=(("head", "^fc/", 1.0),)'], "matches no optimizer group"),
    "grad_accum_not_dividing": (["--config.grad_accum_steps=5"], "must be a multiple of grad_accum_steps 5"),
    "zero_image_size": (["--config.data.image_size=0"], "data.image_size must be positive"),
    "too_few_classes": (["--config.model.num_classes=5"], "model.num_classes=5 but digits:train has 10 classes"),
    "unknown_loss": (['--config.loss=(("foo", 1.0),)'], "unknown loss piece 'foo'"),
    "bad_eval_entry": (["--config.data.eval=digits"], "must be NAME:SPLIT or LABEL=NAME:SPLIT"),
    "missing_split": (["--config.data.eval=digits:nosplit"], "no split 'nosplit'"),
    "missing_dataset": (["--config.data.train=nonexistent_dataset"], "unknown dataset 'nonexistent_dataset'"),
    "missing_folder": (["--config.data.train=folder:/nonexistent/images"], "image folder /nonexistent/images does not exist"),
    "classes_out_of_range": (["--config.data.classes=(1, 11)"], "must be distinct labels in 0..9"),
    "batch_larger_than_data": (["--config.batch_size=4096"], "fewer than batch_size=4096"),
    "bad_channels": (["--config.data.channels=2"], "channels must be None, 1 or 3"),
    "probe_without_backbone": (["--config.recipe=linear_probe"], "needs model.init"),
    "missing_weights_file": (["--config.model.init=/nonexistent/w.pth"], "neither a registry name nor an existing file"),
}


@pytest.mark.parametrize("row", sorted(CONFIG_ROWS))
def test_config_row(row, cfg_file, tmp_path):
    args, pattern = CONFIG_ROWS[row]
    one_line_error(train(cfg_file, tmp_path / "run", 4, *args), pattern)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_failed_start_does_not_lock_the_workdir(cfg_file, tmp_path):
    """A mistaken first attempt leaves no run behind: the corrected command is accepted."""
    one_line_error(train(cfg_file, tmp_path / "run", 1, "--config.data.train=digitz"), "unknown dataset 'digitz'")
    rc, _, err = train(cfg_file, tmp_path / "run", 1)
    assert rc == 0, err[-2000:]


@pytest.mark.parametrize(
    "row,text,pattern",
    [
        ("config_file_missing", None, "config file not found"),
        ("config_syntax_error", "def get_config(:\n", "cannot build the config (SyntaxError"),
        ("config_without_get_config", "x = 1\n", "defines no get_config(arg=None)"),
        ("nan_lr_in_config_file", CONFIG.replace('"lr": 0.05', '"lr": float("nan")'),
         "optim.lr must be a finite non-negative number, got nan"),
    ],
)
def test_config_file_row(row, text, pattern, tmp_path):
    path = tmp_path / "c.py"
    if text is not None:
        path.write_text(text)
    one_line_error(jtl("train", "--config", path, "--workdir", tmp_path / "run"), pattern)


# ----------------------------------------------------------------------------- data rows


def _png(path: Path, value: int = 128):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_empty_image_folder(cfg_file, tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
    one_line_error(train(cfg_file, tmp_path / "run", 4, f"--config.data.train=folder:{tmp_path / 'imgs'}"),
                   "has no")


def test_non_image_file_in_folder(cfg_file, tmp_path):
    for c in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / "imgs" / c / f"{i}.png", 40 * i)
    bad = tmp_path / "imgs" / "dog" / "notes.png"
    bad.write_text("this is a text file, not a PNG")
    one_line_error(train(cfg_file, tmp_path / "run", 4, f"--config.data.train=folder:{tmp_path / 'imgs'}"),
                   f"unreadable image {bad}")


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_truncated_dataset_file(cfg_file, tmp_path, monkeypatch):
    raw = tmp_path / "fmnist"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 100), ("t10k", 50)):
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-2000])  # cut short, as by an interrupted copy
    monkeypatch.setenv("JTL_FASHION_MNIST_DIR", str(raw))
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))
    one_line_error(train(cfg_file, tmp_path / "run", 4, "--config.data.train=fashion_mnist",
                         "--config.data.eval=()"), f"cannot read IDX file {bad}")
    assert not list((tmp_path / "data").rglob("*.array_record*"))  # nothing half-prepared is left to be read


def test_corrupted_prepared_dataset(cfg_file, finished_run, tmp_path, monkeypatch):
    shared = Path(os.environ["JTL_DATA_DIR"]) / "jtl_digits"  # prepared by finished_run
    shutil.copytree(shared, tmp_path / "data" / "jtl_digits")
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))
    (f,) = (tmp_path / "data" / "jtl_digits").rglob("*full.array_record*")
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01  # one flipped bit
    f.write_bytes(bytes(b))
    line = one_line_error(train(cfg_file, tmp_path / "run", 4), "prepared dataset files")
    assert str(f) in line and "delete" in line


def test_nan_in_float_input_batch(tmp_path):
    """A float source (cached features, float image files) with NaN is refused before a step uses it."""
    trainer = Trainer(tiny_config(total_steps=3), tmp_path)
    real = trainer.task.train_iterator

    class FloatWithNaN:
        def __next__(self):
            b = next(real)
            x = b["image"].astype(np.float32) / 255.0
            x[0, 0, 0, 0] = np.nan
            return {**b, "image": x}

        def get_state(self):
            return real.get_state()

    trainer.task.train_iterator = FloatWithNaN()
    with pytest.raises(DataError, match=r"input batch of step 1 .* holds NaN or inf values \(1 of"):
        trainer.run()
    assert not any((tmp_path / "checkpoints").glob("[0-9]*"))


@pytest.fixture(scope="module")
def probe_run(cfg_file, finished_run, tmp_path_factory):
    wd = tmp_path_factory.mktemp("probe") / "run"
    rc, _, err = train(cfg_file, wd, 2, "--config.recipe=linear_probe", f"--config.model.init={finished_run}")
    assert rc == 0, err[-3000:]
    return wd


@pytest.mark.parametrize("damage", ["nan", "truncated"])
def test_damaged_feature_cache(damage, cfg_file, finished_run, probe_run, tmp_path):
    wd = copy_run(probe_run, tmp_path)
    (cache,) = (wd / "features").glob("train-*.npz")
    if damage == "nan":
        with np.load(cache) as z:
            f, y = z["features"].copy(), z["labels"]
        f[3, 1] = np.nan
        np.savez(cache, features=f, labels=y)
        pattern = "holds NaN or inf"
    else:
        cache.write_bytes(cache.read_bytes()[:500])
        pattern = "is damaged"
    before = snapshot(wd)
    line = one_line_error(train(cfg_file, wd, 2, "--config.recipe=linear_probe", f"--config.model.init={finished_run}"),
                          pattern)
    assert f"feature cache {cache}" in line and "delete it" in line
    assert_kept(before, wd)


# ----------------------------------------------------------------------------- weights rows


def test_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "cache" / "weights" / "resnet18-f37072fd.pth"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the published file")
    line = one_line_error(jtl("port", "--src", "resnet18.tv_in1k", "--out", tmp_path / "out"),
                          "does not match resnet18.tv_in1k's")
    assert str(bad) in line and bad.read_bytes() == b"not the published file"
    assert not (tmp_path / "out").exists()


def test_port_missing_source(tmp_path):
    one_line_error(jtl("port", "--src", "resnet19.tv_in1k", "--out", tmp_path / "out"),
                   "weights file not found: resnet19.tv_in1k (nor is it a registry name")


def test_weights_of_another_architecture(cfg_file, finished_run, tmp_path):
    one_line_error(train(cfg_file, tmp_path / "run", 4, f"--config.model.init={finished_run}",
                         "--config.model.name=cifar_resnet14"), "pretrained weights do not fit the model: missing")


def test_num_classes_mismatch_on_restore(cfg_file, finished_run, tmp_path):
    """Resuming checkpoints with another head size (config.json lost) is refused, not half-loaded."""
    wd = copy_run(finished_run, tmp_path)
    (wd / "config.json").unlink()
    before = snapshot(wd)
    line = one_line_error(train(cfg_file, wd, 6, "--config.model.num_classes=12"),
                          "does not fit this run's model/optimizer (Requested shape: (")
    # orbax names the first array it finds, head/bias (12,) or head/kernel (64, 12)
    assert re.search(r"12,?\) is not compatible with the stored shape: \(", line) and line.endswith("--workdir")
    assert_kept(before, wd)


# ----------------------------------------------------------------------------- workdir rows


def test_workdir_of_another_config(cfg_file, finished_run, tmp_path):
    wd = copy_run(finished_run, tmp_path)
    before = snapshot(wd)
    one_line_error(train(cfg_file, wd, 4, "--config.optim.lr=0.5"), "holds a run of another config (differs in optim)")
    assert snapshot(wd) == before


def test_damaged_config_json(cfg_file, finished_run, tmp_path):
    wd = copy_run(finished_run, tmp_path)
    (wd / "config.json").write_text('{"seed": 0, ')
    before = snapshot(wd)
    one_line_error(train(cfg_file, wd, 4), f"{wd / 'config.json'} is unreadable")
    one_line_error(jtl("eval", "--workdir", wd, "--split", "val"), f"{wd / 'config.json'} is unreadable")
    assert snapshot(wd) == before


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_unwritable_workdir(cfg_file, tmp_path):
    ro = tmp_path / "ro"
    if _mount_tmpfs(ro, "ro,size=64k"):
        try:
            one_line_error(train(cfg_file, ro / "run", 4), f"workdir {ro / 'run'} is not writable (Read-only file system)")
        finally:
            _umount(ro)
    elif os.geteuid() != 0:
        ro.mkdir(exist_ok=True)
        ro.chmod(0o555)
        one_line_error(train(cfg_file, ro / "run", 4), "is not writable (Permission denied)")
    # A workdir path through a regular file fails the same way on any machine.
    (tmp_path / "file").write_text("x")
    one_line_error(train(cfg_file, tmp_path / "file" / "run", 4), "is not writable (Not a directory)")


def test_disk_full_tmpfs(cfg_file, tmp_path):
    """A 1.2 MB file system fills while the second checkpoint is written: one line, exit 2, the first
    checkpoint and the logs intact, and the same command resumes once there is room."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "size=1200k"):
        pytest.skip("mounting a tmpfs is not permitted here (test_disk_full_when_writing_metrics covers ENOSPC)")
    try:
        wd = mnt / "run"
        one_line_error(train(cfg_file, wd, 30, "--config.checkpoint_every=3", "--config.eval_every=3",
                             "--config.log_every=3", "--config.keep_checkpoints=2"),
                       f"no space left on the device of {wd}")
        done = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
        assert done, "no checkpoint was completed before the disk filled"
        rows = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines()]  # every line parses
        assert rows and json.loads((wd / "config.json").read_text())["total_steps"] == 30
        before = snapshot(wd / "checkpoints" / str(done[-1]))
        restore_variables(wd, which="latest")  # the newest complete checkpoint reads back and verifies
        assert snapshot(wd / "checkpoints" / str(done[-1])) == before
        subprocess.run(["mount", "-o", "remount,size=20m", str(mnt)], check=True)
        rc, _, err = train(cfg_file, wd, 30, "--config.checkpoint_every=3", "--config.eval_every=3",
                           "--config.log_every=3", "--config.keep_checkpoints=2")
        assert rc == 0, err[-2000:]
        steps = [json.loads(ln)["step"] for ln in (wd / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(3, 31, 3))
    finally:
        _umount(mnt)


def test_disk_full_when_writing_metrics(tmp_path, monkeypatch):
    """ENOSPC from a metrics write (simulated): DiskFull, and no half-written line left in metrics.jsonl."""
    from jtl.train import writer

    cfg = tiny_config(total_steps=6, log_every=1, checkpoint_every=2)
    trainer = Trainer(cfg, tmp_path)
    real_write, calls = os.write, {"n": 0}

    def write(fd, data):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th metrics line: write part of it, then the disk is full
            real_write(fd, bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(writer.os, "write", write)
    with pytest.raises(DiskFull, match="no space left on the device of .*rerun the same command to resume"):
        trainer.run()
    monkeypatch.undo()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3]


def test_line_cut_by_a_kill_is_dropped_on_resume(cfg_file, finished_run, tmp_path):
    wd = copy_run(finished_run, tmp_path)
    with open(wd / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # a run killed in the middle of a write
    rc, _, err = train(cfg_file, wd, 6)
    assert rc == 0, err[-2000:]
    steps = [json.loads(ln)["step"] for ln in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- run-time rows


@pytest.mark.parametrize("every,pattern", [(4, "loss became nan at step 3"),
                                           (2, "parameters became NaN or inf by step 2")])
def test_nan_loss(every, pattern, cfg_file, tmp_path):
    """lr=1e30: the update of step 2 overflows; the loss of step 3 is NaN. Whichever is seen first
    (a checkpoint at step 2 checks the parameters) stops the run before anything non-finite is saved."""
    wd = tmp_path / "run"
    line = one_line_error(train(cfg_file, wd, 8, "--config.optim.lr=1e30", f"--config.checkpoint_every={every}",
                                "--config.eval_every=0"), pattern)
    assert "last good checkpoint: none; lower optim.lr" in line
    # No checkpoint holds a state that came from the non-finite loss.
    if any((wd / "checkpoints").glob("[0-9]*")):
        v = restore_variables(wd, which="latest")
        assert all(np.isfinite(x).all() for x in _flat(v["params"]).values())


def test_batch_not_divisible_by_devices(cfg_file, tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-m", "jtl.cli", "train", "--config", f"{cfg_file}:2", "--workdir",
                        str(tmp_path / "run"), "--config.batch_size=30"], capture_output=True, text=True, env=env)
    one_line_error((r.returncode, r.stdout, r.stderr), "batch_size=30 is not divisible by the 4 devices")


def test_eval_and_predict_rows(finished_run, tmp_path):
    one_line_error(jtl("eval", "--workdir", finished_run, "--split", "nosuch"), "is neither a data.eval/data.test label (val)")
    one_line_error(jtl("eval", "--workdir", finished_run, "--split", "digits:nosplit"), "no split 'nosplit'")
    one_line_error(jtl("predict", "--workdir", finished_run, tmp_path / "missing.png"), "image not found")
    empty = tmp_path / "fresh"
    empty.mkdir()
    shutil.copy(finished_run / "config.json", empty / "config.json")
    one_line_error(jtl("eval", "--workdir", empty, "--split", "val"), "has no checkpoint yet; train first")


# ----------------------------------------------------------------------------- damaged checkpoints


def _biggest_array_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def _damage(step_dir: Path, how: str) -> None:
    if how == "bit_flip":
        f = _biggest_array_file(step_dir)
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0x01
        f.write_bytes(bytes(b))
    elif how == "truncated":
        f = _biggest_array_file(step_dir)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "missing_item":
        shutil.rmtree(step_dir / "state")
    elif how == "garbled_iterator_state":
        (step_dir / "data" / "metadata").write_text('{"iterator": {"next_in')


@pytest.mark.parametrize("how", ["bit_flip", "truncated", "missing_item", "garbled_iterator_state"])
def test_damaged_latest_checkpoint_falls_back(how, cfg_file, finished_run, straight_6, tmp_path):
    wd = copy_run(finished_run, tmp_path)
    _damage(wd / "checkpoints" / "4", how)
    rc, _, err = train(cfg_file, wd, 6)
    assert rc == 0 and "Traceback" not in err, err[-3000:]
    warn = [ln for ln in err.splitlines() if ln.startswith("jtl: warning: checkpoint")]
    assert len(warn) == 1 and str(wd / "checkpoints" / "4") in warn[0], err[-2000:]
    assert (wd / "checkpoints.corrupt" / "4").is_dir()  # kept for inspection, not deleted
    assert json.loads((wd / "summary.json").read_text())["resumed_from"] == 2
    assert_bitwise(restore_variables(wd, which="latest"), straight_6)


def test_every_checkpoint_damaged_is_refused(cfg_file, finished_run, tmp_path):
    wd = copy_run(finished_run, tmp_path)
    for step in (2, 4):
        _damage(wd / "checkpoints" / str(step), "bit_flip")
    before = snapshot(wd)
    one_line_error(train(cfg_file, wd, 4), "every checkpoint in")
    assert_kept(before, wd)
    with pytest.raises(CorruptCheckpoint, match="every checkpoint"):
        restore_variables(wd)


def test_damaged_checkpoint_as_starting_weights(finished_run, tmp_path, capfd):
    """``model.init=RUN`` (restore_variables) skips a damaged checkpoint with a warning naming it."""
    wd = copy_run(finished_run, tmp_path)
    _damage(wd / "checkpoints" / "4", "bit_flip")
    v = restore_variables(wd, which="latest")
    assert v["step"] == 2
    err = capfd.readouterr().err
    # a flipped bit fails a checksum ("corrupt") or, where it lands in compressed framing, the read ("unreadable")
    assert any(f"checkpoint {wd / 'checkpoints' / '4'} is {what}" in err for what in ("corrupt", "unreadable")), err


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_metrics_bitwise_other_seed_differs(tmp_path):
    def run(name, seed):
        cfg = tiny_config(total_steps=6, eval_every=3, checkpoint_every=3, seed=seed)
        Trainer(cfg, tmp_path / name).run()
        rows = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            r.pop("train/images_per_s", None)  # wall-clock, the only field allowed to differ
        return rows, restore_variables(tmp_path / name, which="latest")

    (a, va), (b, vb), (c, _) = run("a", 0), run("b", 0), run("c", 1)
    assert a == b  # floats compared exactly (JSON round-trips float64)
    assert_bitwise(va, vb)
    assert [r["train/loss"] for r in a] != [r["train/loss"] for r in c]
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert all(info["versions"][k] for k in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint"))
    assert info["devices"] and info["git_commit"]
