"""Bad input refused in one line (rows 46-57 of docs/reliability.md's bad-input table), TensorBoard
on a full disk, outputs readable as the umask allows, and ``jtl --version``.

The CLI rows run ``jtl.cli.main`` in this process and check: exit status 2 and stderr exactly
one line, ``jtl: error: ...`` (an exception escaping ``main`` fails the test).
"""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from jtl import __version__
from jtl.cli import main as jtl_main
from jtl.config import SEED_MAX, resolve
from jtl.errors import ConfigError, DataError, WeightsError
from train_helpers import config_file_text, one_line_error, run_jtl


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.py"
    path.write_text(config_file_text(steps=4, every=2, log_every=1))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """digits prepared before any test captures stderr (preparing prints progress)."""
    from jtl import data as jdata

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
        jdata.load("digits", "train")
    return "digits"


def jtl(*args) -> tuple[int, str, str]:
    return run_jtl(*args)


def one_line(result, pattern: str) -> str:
    """Exit 2 and stderr exactly one ``jtl: error:`` line containing ``pattern``."""
    return one_line_error(result, pattern, alone=True)


def train(cfg_file, workdir, *overrides):
    return jtl("train", "--config", str(cfg_file), "--workdir", workdir, *overrides)


def assert_nothing_run(workdir: Path) -> None:
    assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoints").exists()


# ------------------------------------------------------------------------- config values

CONFIG_ROWS = {
    "negative_seed": (["--config.seed=-1"], f"seed must be an integer in 0..{SEED_MAX}, got -1"),
    "seed_too_large": ([f"--config.seed={2**31 - 1}"], f"seed must be an integer in 0..{SEED_MAX}"),
    "momentum_above_one": (["--config.optim.momentum=1.5"], "optim.momentum must be in [0, 1)"),
    "warmup_longer_than_run": (["--config.optim.warmup_steps=4"],
                               "optim.warmup_steps=4 must be >= 0 and less than total_steps=4"),
    "best_metric_unknown_label": (["--config.best_metric=test/top1"],
                                  "best_metric 'test/top1' must be LABEL/KEY with LABEL a data.eval label (val)"),
    "best_metric_unknown_key": (["--config.best_metric=val/loss"], "KEY one of top1, top5, macro_precision"),
    "on_error_unknown": (["--config.data.on_error=ignore"], "data.on_error must be raise or skip, got 'ignore'"),
    # Inception-v3's Google weights were trained on (x - 0.5) / 0.5, not ImageNet's mean/std.
    "inception_weights_imagenet_scaling": (
        ["--config.model.init=inception_v3.tv_in1k", "--config.data.normalize=imagenet"],
        "model.init inception_v3.tv_in1k was trained on data.normalize='inception' inputs, not 'imagenet'; "
        "set data.normalize=inception"),
}


@pytest.mark.parametrize("case", list(CONFIG_ROWS))
def test_config_value_row(cfg_file, tmp_path, case):
    overrides, pattern = CONFIG_ROWS[case]
    one_line(train(cfg_file, tmp_path / "run", *overrides), pattern)
    assert_nothing_run(tmp_path / "run")


def test_good_values_are_accepted():
    cfg = resolve({}, ["seed=2147483646", "optim.momentum=0.0", "optim.warmup_steps=999", "best_metric=test/macro_f1",
                       "data.on_error=skip"])
    assert cfg.seed == SEED_MAX and cfg.data.on_error == "skip"
    assert resolve({"data": {"eval": ("src=digits:val", "digits:test")}}, ["best_metric=src/top1"]).best_metric
    assert resolve({}, ["optim.name=adam", "optim.momentum=1.5"])  # momentum is SGD's alone
    with pytest.raises(ConfigError, match="data.eval label \\(src, test\\)"):
        resolve({"data": {"eval": ("src=digits:val", "digits:test")}}, ["best_metric=digits/top1"])


# ------------------------------------------------------------------------- jtl data


@pytest.mark.parametrize("n", ["0", "-2"])
def test_data_show_needs_a_positive_n(digits, tmp_path, n):
    out = tmp_path / "grid.png"
    one_line(jtl("data", "show", digits, "--n", n, "--out", out), f"--n (samples per row) must be a positive integer, got {n}")
    assert not out.exists()


@pytest.mark.parametrize("option,pattern", [
    ("val_fraction=abc", "option val_fraction must be a number in [0, 1), got 'abc'"),
    ("limit=many", "option limit must be a positive integer, got 'many'"),
    ("classes=abc", "option classes must be a tuple of class ids"),
    ("on_error=ignore", "option on_error must be raise or skip"),
    ("bogus=1", "unknown option 'bogus'; known: backgrounds, classes, data_dir, download"),
])
def test_data_options_are_checked(digits, option, pattern):
    one_line(jtl("data", "stats", digits, "-o", option), pattern)


def test_data_negative_seed(digits):
    one_line(jtl("data", "stats", digits, "--seed", "-1"), f"--seed must be an integer in 0..{SEED_MAX}, got -1")


def test_data_good_options_still_work(digits):
    rc, out, err = jtl("data", "stats", digits, "-o", "val_fraction=0.3", "-o", "classes=(1,2)")
    assert rc == 0, err
    assert "val" in out.splitlines()[1] and len(out.splitlines()) == 5  # title, header, 2 classes, total


# ------------------------------------------------------------------------- disk full at the first checkpoint


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_at_first_checkpoint_with_tensorboard_failing(digits, cfg_file, tmp_path, monkeypatch):
    """The first checkpoint hits a full disk, and so does TensorBoard's last flush/close: the
    run's one-line DiskFull error reaches the user, not the events writer's traceback."""
    from tensorboardX import record_writer

    from jtl.train import checkpoint

    monkeypatch.setattr(checkpoint.Checkpoints, "save", _enospc)
    monkeypatch.setattr(record_writer.RecordWriter, "flush", _enospc)
    monkeypatch.setattr(record_writer.RecordWriter, "close", _enospc)
    wd = tmp_path / "run"
    one_line(train(cfg_file, wd), f"no space left on the device of {wd} (OSError); free space or move the workdir")
    assert [json.loads(ln)["step"] for ln in (wd / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_metric_writer_close_returns_the_error(tmp_path, monkeypatch):
    from tensorboardX import record_writer

    from jtl.train.writer import MetricWriter

    w = MetricWriter(tmp_path)
    w.write(1, {"train/loss": 0.5})
    monkeypatch.setattr(record_writer.RecordWriter, "flush", _enospc)
    error = w.close()
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert w.close() is None  # closing twice is harmless


# ------------------------------------------------------------------------- jtl port of a file that is not a checkpoint


@pytest.mark.parametrize("content", ["text", "random", "legacy_header"])
def test_port_of_a_non_checkpoint(tmp_path, content):
    src = tmp_path / "x.pth"
    rng = np.random.default_rng(0)
    if content == "text":
        src.write_text("these are not weights\n" * 20)
    elif content == "random":
        src.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    else:  # a legacy torch file's opening (the pickled magic number), then garbage
        magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
        src.write_bytes(magic + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    out = tmp_path / "out"
    line = one_line(jtl("port", "--arch", "resnet18", "--src", src, "--out", out), f"{src}: ")
    assert "weights_only" not in line
    if content != "legacy_header":
        assert "not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch file)" in line
    assert not out.exists()


# ------------------------------------------------------------------------- output permissions


def _outputs(tmp_path: Path, digits: str) -> dict[str, Path]:
    """Write one output of each kind; {kind: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jtl.collect import _write_text
    from jtl.data.cli import show
    from jtl.plotting import save_png
    from jtl.train.runinfo import write_json
    from jtl.weights import save_ported

    tmp_path.mkdir()
    write_json(tmp_path / "summary.json", {"a": 1})
    fig = plt.figure()
    save_png(fig, tmp_path / "plot.png")
    plt.close(fig)
    _write_text(tmp_path / "table.md", "| a |\n")
    show([digits], str(tmp_path / "grid.png"), n=2)
    variables = {"params": {"fc": {"kernel": np.zeros((2, 3), np.float32)}}, "batch_stats": {}}
    port = save_ported(tmp_path / "ported", variables, {"arch": "x"})
    return {"json": tmp_path / "summary.json", "plot": tmp_path / "plot.png", "table": tmp_path / "table.md",
            "grid": tmp_path / "grid.png", "port_dir": port, "port_meta": port / "jtl_port.json"}


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(digits, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        paths = _outputs(tmp_path / "out", digits)
    finally:
        os.umask(old)
    modes = {k: oct(p.stat().st_mode & 0o777) for k, p in paths.items()}
    want = {k: oct(dir_mode if p.is_dir() else file_mode) for k, p in paths.items()}
    assert modes == want
    inside = {oct(p.stat().st_mode & 0o777) for p in paths["port_dir"].rglob("*")}  # orbax's files too
    assert inside == {oct(file_mode), oct(dir_mode)}


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from jtl.fileio import atomic_open

    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "keep.txt") as f:
        f.write("new")
        raise RuntimeError("interrupted")
    assert (tmp_path / "keep.txt").read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]


# ------------------------------------------------------------------------- library checks and --version


def test_library_functions_raise_jtl_errors(tmp_path):
    from jtl.data.cli import check_option, show
    from jtl.weights.torch_format import load_pth

    with pytest.raises(DataError, match="--n"):
        show(["digits"], str(tmp_path / "g.png"), n=0)
    with pytest.raises(DataError, match="unknown option 'bogus'"):
        check_option("bogus", 1)
    (tmp_path / "x.pth").write_text("hello")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        load_pth(tmp_path / "x.pth")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        jtl_main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"jtl {__version__}\n"
