"""scripts/da_results.py's tables (jtl.results.da_tables): selection per seed and gains, checked against numpy argmax/argmin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jtl.results import da_tables

SEEDS = [0, 1, 2]
METHODS = ["source_only", "dann", "jan", "im"]


@pytest.fixture(scope="module")
def da_results():
    return da_tables


def _rows(rng, methods):
    return {m: [{"seed": s, "target": rng.uniform(0.1, 0.9), "source_val": rng.uniform(0.5, 1.0),
                 "snd": rng.uniform(3, 8), "im": rng.uniform(0, 2), "dev": rng.normal(), "wall": rng.uniform(10, 99)}
                for s in SEEDS] for m in methods}


def _parse(row: str) -> list[str]:
    return [c.strip() for c in row.strip("|").split("|")]


def test_selection_picks_per_seed_best_and_never_a_control(da_results):
    rng = np.random.default_rng(0)
    rows = _rows(rng, METHODS + ["dann_weight0"])
    for r in rows["dann_weight0"]:  # the control is best under every criterion: it must still not be chosen
        r.update(target=1.0, source_val=1.0, snd=99.0, im=99.0, dev=-99.0)
    table = da_results.selection_table(rows, SEEDS)
    assert _parse(table[0]) == ["selection", "chosen (per seed)", "target top-1", "vs source_only", "vs dann_weight0"]
    got = {_parse(line)[0]: _parse(line) for line in table[2:]}
    assert list(got) == ["source_val", "snd", "im", "dev", "oracle (uses target labels)"]
    target = np.array([[r["target"] for r in rows[m]] for m in METHODS])  # (method, seed)
    base = 100 * target[0].mean()
    control = 100 * np.mean([r["target"] for r in rows["dann_weight0"]])
    for crit, label, better in [("source_val", "source_val", np.argmax), ("snd", "snd", np.argmax),
                                ("im", "im", np.argmax), ("dev", "dev", np.argmin),
                                ("target", "oracle (uses target labels)", np.argmax)]:
        score = np.array([[r[crit] for r in rows[m]] for m in METHODS])
        pick = better(score, axis=0)
        chosen = [METHODS[i] for i in pick]
        acc = 100 * target[pick, np.arange(len(SEEDS))]
        row = got[label]
        assert row[1] == ", ".join(chosen)
        assert row[2] == f"{acc.mean():.2f} +- {acc.std():.2f}"
        assert float(row[3]) == pytest.approx(acc.mean() - base, abs=0.006)
        assert float(row[4]) == pytest.approx(acc.mean() - control, abs=0.006)


def test_method_table_mean_std_and_control_label(da_results):
    rng = np.random.default_rng(1)
    rows = _rows(rng, ["source_only", "dann", "dann_weight0"])
    table = da_results.method_table(rows)
    body = [_parse(line) for line in table[2:]]
    assert [b[0] for b in body] == ["source_only", "dann", "dann_weight0 (control: dann, loss.dann=0.0)"]
    for b, m in zip(body, rows):
        t = 100 * np.array([r["target"] for r in rows[m]])
        assert b[1] == f"{t.mean():.2f} +- {t.std():.2f}"
        assert b[5] == f"{np.mean([r['dev'] for r in rows[m]]):.2f} +- {np.std([r['dev'] for r in rows[m]]):.2f}"
        assert b[6] == f"{np.mean([r['wall'] for r in rows[m]]):.0f}"


def test_unknown_method_is_a_one_line_error():
    script = Path(__file__).resolve().parents[1] / "scripts" / "da_results.py"
    r = subprocess.run([sys.executable, str(script), "--methods", "dann,nope", "--controls", "", "--workdir",
                        "/nonexistent"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "unknown method or control nope" in r.stderr
