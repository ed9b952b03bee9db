"""Sweep specs and `jtl sweep`: hashed workdirs, skipping finished runs, recorded failures, vectorized groups."""

import json
import os
import textwrap

import numpy as np
import pytest

from jtl.cli import main
from jtl.errors import ConfigError
from jtl.sweep import choice, grid, log_uniform, member_name, random_search, uniform
from jtl.sweep.runner import run_sweep
from jtl.train.pieces import register


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


@register("test_branchy")
def _branchy(ctx, *, gate: float = 1.0):
    """A piece with Python control flow on its option: it cannot be traced with the option swept."""
    return 0.0 * ctx.out["logits"].sum() if gate > 0.5 else 0.0 * ctx.out["logits"].mean()


def test_grid_is_the_product():
    runs = grid({"optim.lr": [0.1, 0.01], "seed": [0, 1, 2]})
    assert len(runs) == 6 and runs[0] == {"optim.lr": 0.1, "seed": 0} and runs[-1] == {"optim.lr": 0.01, "seed": 2}
    with pytest.raises(ConfigError):
        grid({"optim.lr": []})


def test_random_search_is_domainbed_style():
    space = {"optim.lr": log_uniform(1e-4, 1e-1), "loss.dann": uniform(0.1, 1.0), "adapt.bottleneck_dim": choice([128, 256]),
             "total_steps": 100}
    runs = random_search(space, 4, trial_seeds=(0, 1))
    assert len(runs) == 8 and [r["seed"] for r in runs] == [0, 1] * 4
    assert all(1e-4 <= r["optim.lr"] <= 1e-1 and 0.1 <= r["loss.dann"] <= 1.0 and r["total_steps"] == 100 for r in runs)
    assert runs[0]["optim.lr"] == runs[1]["optim.lr"]  # trial seeds share the draw
    # Draw h does not depend on how many draws there are, nor on the trial seeds.
    more = random_search(space, 7, trial_seeds=(5,))
    assert [m["optim.lr"] for m in more[:4]] == [r["optim.lr"] for r in runs[::2]]
    lrs = np.log10([r["optim.lr"] for r in random_search(space, 400, trial_seeds=(0,))])
    assert -4 <= lrs.min() < -3.6 and -1.4 < lrs.max() <= -1  # spread over the log range


def test_member_names_are_stable_and_distinct():
    a = member_name("c.py:x", {"optim.lr": 0.1, "seed": 0})
    assert a == member_name("c.py:x", {"seed": 0, "optim.lr": 0.1})  # order does not matter
    assert a != member_name("c.py:x", {"optim.lr": 0.1, "seed": 1}) and a != member_name("c.py:y", {"optim.lr": 0.1, "seed": 0})
    assert len(a) == 12


SWEEP = '''
import sys
sys.path.insert(0, {tests!r})
from train_helpers import tiny_config
from jtl.sweep import grid

def get_config(arg=None):
    return tiny_config(total_steps=6).to_dict()

def get_sweep(arg=None):
    if arg == "branchy":
        return [{{"loss": (("ce", 1.0), ("test_branchy", 1.0)), "loss_options.test_branchy.gate": g}} for g in (0.2, 0.9)]
    return grid({{"optim.lr": [0.01, 0.02], "seed": [0, 1]}}) + [{{"optim.lr": 1e30}}, {{"optim.nope": 1}}]
'''


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep_cfg.py"
    path.write_text(textwrap.dedent(SWEEP.format(tests=os.path.dirname(__file__))))
    return str(path)


def test_sweep_vectorizes_records_failures_and_skips_finished(sweep_file, tmp_path):
    out = tmp_path / "sweep"
    runs = run_sweep(sweep_file, out, log=lambda *_: None)
    status = {json.dumps(r.overrides, sort_keys=True): r for r in runs}
    assert [r.status for r in runs].count("done") == 4
    # The four lr x seed runs and the diverging one form one vectorized group of five.
    for r in runs[:4]:
        assert json.loads((r.workdir / "summary.json").read_text())["vectorized_members"] == 5
        assert json.loads((r.workdir / "overrides.json").read_text()) == r.overrides
    bad = status[json.dumps({"optim.lr": 1e30})]
    assert bad.status == "failed" and "NonFiniteLoss" in json.loads((bad.workdir / "failed.json").read_text())["error"]
    typo = status[json.dumps({"optim.nope": 1})]
    assert typo.status == "failed" and "optim.nope" in typo.error
    manifest = json.loads((out / "sweep.json").read_text())
    assert [m["name"] for m in manifest["members"]] == [r.name for r in runs]
    # A rerun trains nothing that finished, and retries the failed ones.
    stamps = {r.name: (r.workdir / "summary.json").stat().st_mtime_ns for r in runs if r.status == "done"}
    again = run_sweep(sweep_file, out, log=lambda *_: None)
    assert {r.name: r.status for r in again if r.name in stamps} == {n: "skipped" for n in stamps}
    assert all((out / n / "summary.json").stat().st_mtime_ns == t for n, t in stamps.items())
    assert sum(r.status == "failed" for r in again) == 2


def test_sweep_falls_back_to_one_by_one_when_not_traceable(sweep_file, tmp_path):
    logs = []
    runs = run_sweep(f"{sweep_file}:branchy", tmp_path / "b", log=logs.append)
    assert [r.status for r in runs] == ["done", "done"]
    assert any("one by one" in line for line in logs)
    assert all("vectorized_members" not in json.loads((r.workdir / "summary.json").read_text()) for r in runs)


def test_cli_sweep_exit_status_and_list(sweep_file, tmp_path, capsys):
    assert main(["sweep", "--config", sweep_file, "--workdir", str(tmp_path / "c"), "--sequential"]) == 1  # 2 failed
    assert main(["sweep", "--config", sweep_file, "--workdir", str(tmp_path / "c"), "--list"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()[-6:]
    assert [line.split()[1] for line in listed] == ["done"] * 4 + ["failed"] * 2
    assert main(["sweep", "--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path / "d")]) == 2
