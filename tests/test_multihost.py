"""Multi-process training: two local CPU processes of two devices each equal one process of four."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from jtl import data as D
from jtl.distributed import initialize_from_env, is_writer
from jtl.errors import ConfigError
from jtl.train.checkpoint import restore_variables
from jtl.train.loop import Trainer
from train_helpers import losses, tiny_config

DIST_ENV = ("JTL_COORDINATOR", "JTL_NUM_PROCESSES", "JTL_PROCESS_ID", "JTL_DISTRIBUTED")


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
    for k in DIST_ENV:
        monkeypatch.delenv(k, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_file(tmp_path, cfg):
    path = tmp_path / "tiny.py"
    body = f"    return json.loads({cfg.to_json_best_effort()!r})\n"
    path.write_text("import json\n\n\ndef get_config(arg=None):\n" + body)
    return path


def _launch(tmp_path, name, config, workdir, *, devices, env=(), args=()):
    env = {**{k: v for k, v in os.environ.items() if k not in DIST_ENV},
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **dict(env)}
    log = open(tmp_path / f"{name}.log", "w")  # a file, not a pipe: a chatty process cannot block on it
    cmd = [sys.executable, "-m", "jtl.cli", "train", "--config", str(config), "--workdir", str(workdir), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    proc.log_path = tmp_path / f"{name}.log"
    return proc


def _wait_all(procs, timeout_s: float) -> None:
    """Wait for every process; on a failure or the timeout kill the rest (a hung collective must not hang CI)."""
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [p for p in procs if p.returncode != 0]
    if bad:
        tails = "\n".join(f"--- {p.log_path.name} (exit {p.returncode}):\n{p.log_path.read_text()[-2000:]}"
                          for p in bad)
        pytest.fail(f"{len(bad)} process(es) failed or timed out after {timeout_s:.0f} s\n{tails}")


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.timeout(420)
def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
    # The settings of tests/test_train.py::test_one_vs_four_devices_same_losses (well conditioned,
    # 8 steps: beyond that training amplifies float rounding, see there).
    cfg = tiny_config(total_steps=8, batch_size=32, save_predictions=True,
                      **{"data.image_size": 16, "optim.lr": 0.01})
    config = _config_file(tmp_path, cfg)
    single = _launch(tmp_path, "single", config, tmp_path / "single", devices=4)
    _wait_all([single], 150)  # also prepares the data both processes then read

    coordinator = f"127.0.0.1:{_free_port()}"
    workdir = tmp_path / "multi"  # one workdir, shared by both processes
    procs = [  # process 0 configured by the environment, process 1 by the command-line flags
        _launch(tmp_path, "p0", config, workdir, devices=2,
                env={"JTL_COORDINATOR": coordinator, "JTL_NUM_PROCESSES": "2", "JTL_PROCESS_ID": "0"}),
        _launch(tmp_path, "p1", config, workdir, devices=2,
                args=("--coordinator", coordinator, "--num-processes", "2", "--process-id", "1")),
    ]
    _wait_all(procs, 300)

    a, b = losses(tmp_path / "single"), losses(workdir)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5, atol=1e-6)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # written once (by process 0)

    sa = json.loads((tmp_path / "single" / "summary.json").read_text())["final"]["val"]
    sb = json.loads((workdir / "summary.json").read_text())["final"]["val"]
    assert sb["count"] == sa["count"]  # every eval example once: gathered from both processes, padding dropped
    assert sb["top1"] == sa["top1"]
    assert sb["confusion_matrix"] == sa["confusion_matrix"]

    qa = np.load(tmp_path / "single" / "predictions" / "val-8.npz")
    qb = np.load(workdir / "predictions" / "val-8.npz")
    np.testing.assert_array_equal(qb["labels"], qa["labels"])  # the split's order, not the processes'
    np.testing.assert_allclose(qb["logits"], qa["logits"], rtol=1e-3, atol=1e-3)

    info = json.loads((workdir / "run_info.json").read_text())
    assert info["process_count"] == 2 and len(info["devices"]) == 4
    assert "top1" in procs[0].log_path.read_text() and "top1" not in procs[1].log_path.read_text()

    # The checkpoint the two processes wrote together reads back in one process (one device), as does
    # the four-device run's; rounding differences of the losses (~1e-6) grow to ~5e-5 in the weights.
    va, vb = restore_variables(tmp_path / "single", "latest"), restore_variables(workdir, "latest")
    assert va["step"] == vb["step"] == 8
    pa, pb = _flat(va["params"]), _flat(vb["params"])
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=0, atol=1e-3, err_msg=k)
    # So does the trainer's state (what `jtl eval` and a resumption in one process restore).
    trainer = Trainer(cfg, workdir)
    try:
        state, _, step = trainer.restore()
    finally:
        trainer.ckpt.close()
    assert step == 8
    got = _flat(jax.device_get(state.params))
    assert all(np.array_equal(got[k], pb[k]) for k in pb)


def _indexed_source(n, images=None):
    """A source whose label is its position: batches reveal which examples they hold."""
    images = np.zeros((n, 4, 4, 1), np.uint8) if images is None else images
    info = D.Info("indexed", tuple(map(str, range(n))), images.shape[1:], ("train",))
    return D.Source("indexed", "train", info, images, np.arange(n), np.arange(n))


def test_global_batches_do_not_depend_on_the_process_count():
    src = _indexed_source(40)
    one = D.make_iterator(src, batch_size=8, seed=3, augment=(), normalize=None)
    two = [D.make_iterator(src, batch_size=4, seed=3, augment=(), normalize=None, process_index=p, process_count=2)
           for p in range(2)]
    for _ in range(12):  # across epoch boundaries
        want = next(one)["label"]
        got = np.concatenate([next(it)["label"] for it in two])
        np.testing.assert_array_equal(got, want)
    # Eval: process p holds slice p of every global batch, in order.
    ev = [list(D.make_iterator(src, batch_size=6, seed=0, train=False, normalize=None, process_index=p,
                               process_count=2)) for p in range(2)]
    flat = np.concatenate([np.concatenate([b0["label"][b0["mask"]], b1["label"][b1["mask"]]]) for b0, b1 in zip(*ev)])
    np.testing.assert_array_equal(flat, np.arange(40))


def test_augmentation_draws_differ_between_processes():
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)  # asymmetric: a flip moves pixel 15 to column 0
    src = _indexed_source(64, np.repeat(image, 64, axis=0))
    its = [D.make_iterator(src, batch_size=16, seed=0, augment=("flip",), normalize=None, process_index=p,
                           process_count=2) for p in range(2)]
    flips = [(next(it)["image"][:, 0, 0, 0] > 0.01).tolist() for it in its]  # normalize=None: x / 255
    assert flips[0] != flips[1]  # the same seed per batch, but each process its own stream


def test_initialize_from_env_single_process_and_mistakes(monkeypatch):
    assert initialize_from_env() is False  # nothing configured: one process, JAX untouched
    assert is_writer()
    monkeypatch.setenv("JTL_NUM_PROCESSES", "1")
    monkeypatch.setenv("JTL_PROCESS_ID", "0")
    monkeypatch.setenv("JTL_COORDINATOR", "localhost:1234")
    assert initialize_from_env() is False  # a run of one process needs no coordinator
    monkeypatch.delenv("JTL_COORDINATOR")
    monkeypatch.setenv("JTL_NUM_PROCESSES", "2")
    with pytest.raises(ConfigError, match="missing: JTL_COORDINATOR"):
        initialize_from_env()
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        initialize_from_env(coordinator="localhost")
    with pytest.raises(ConfigError, match="process id 2 of 2"):
        initialize_from_env(coordinator="localhost:1234", process_id=2)
    monkeypatch.setenv("JTL_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match="JTL_NUM_PROCESSES must be an integer"):
        initialize_from_env()
    monkeypatch.setenv("JTL_DISTRIBUTED", "yes")
    with pytest.raises(ConfigError, match="JTL_DISTRIBUTED"):
        initialize_from_env()
    assert jax.process_count() == 1
