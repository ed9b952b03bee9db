"""``make demo``'s script end to end at a few steps (21: past the recipes' 20 warm-up steps):
every table cell is the final test accuracy its run wrote, across the process boundary of the
run directories (slow: 14 runs compile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_transfer.py"
RECIPES = ("linear_probe", "finetune", "scratch")
ARGS = ["--budgets", "100,0", "--source-steps", "21", "--target-steps", "21", "--batch", "20", "--da-steps", "2"]


def run_demo(out: Path, data: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(out), *ARGS], capture_output=True, text=True,
                          env={**os.environ, "JTL_DATA_DIR": str(data)})
    assert done.returncode == 0, done.stderr[-2000:]


def test_demo_tables_are_the_runs_own_results(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, tmp_path / "data")
    results = json.loads((out / "results.json").read_text())
    for recipe in RECIPES:
        for budget, name in (("100", "100"), ("0", "all")):
            summary = json.loads((out / f"{recipe}_{name}" / "summary.json").read_text())
            assert results["target_top1"][recipe][budget] == summary["final"]["test"]["top1"]
            assert summary["step"] == (21 if recipe != "linear_probe" else 300)
    assert results["source_top1"] == json.loads((out / "source" / "summary.json").read_text())["final"]["test"]["top1"]
    assert set(results["adaptation"]) == {"source_only", "dann", "dan", "dann_weight0"}
    table = (out / "results.md").read_text()
    for recipe in RECIPES:
        cells = [f"{100 * results['target_top1'][recipe][b]:.1f}" for b in ("100", "0")]
        assert f"| {recipe} | {' | '.join(cells)} |" in table
    for png in ("transfer.png", "adaptation.png"):
        assert (out / png).stat().st_size > 1000
    # re-running resumes: every finished run is skipped and the tables are the same
    before = (out / "results.json").read_text()
    run_demo(out, tmp_path / "data")
    assert json.loads((out / "results.json").read_text())["target_top1"] == json.loads(before)["target_top1"]
