"""Refactoring must not move numbers: 20-step losses equal those of the code before it.

The reference losses in ``data/losses_e5f5c4f.json`` were recorded by running this file
as a script on commit e5f5c4f (before the run-directory and architecture changes)::

    git worktree add /tmp/jtl-e5f5c4f e5f5c4f
    PYTHONPATH=/tmp/jtl-e5f5c4f:tests .venv/bin/python tests/test_numbers_unchanged.py --record OUT.json

Cases: source-only, DANN, CDAN+E, MCD, FixMatch (adaptation on digits -> digits:invert),
a linear probe on a short source run, and a 2-member vectorized sweep (two seeds). Every
loss of every step must match to 1e-6 (relative).
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).parent / "data" / "losses_e5f5c4f.json"
STEPS = 20
ADAPT = ("source_only", "dann", "cdan", "mcd", "fixmatch")


def _losses(workdir: Path) -> dict[str, list[float]]:
    """Every logged scalar loss (``train/*loss*``) by name, in step order."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    names = sorted({k for r in rows for k in r if k.startswith("train/") and "loss" in k})
    return {k: [r[k] for r in rows if k in r] for k in names}


def run_cases(root: Path) -> dict:
    from jtl.train.loop import Trainer
    from jtl.train.vector import VectorTrainer
    from test_adapt import da_config
    from train_helpers import tiny_config

    # The recorded runs adapted on the target's train split with digits' default 20% val held
    # out; since adapt.target_val_fraction (default 0: every image is adapted on), that is asked for.
    old_target = {"adapt.target_val_fraction": 0.2}
    out = {}
    for method in ADAPT:
        wd = root / method
        Trainer(da_config(method, total_steps=STEPS, **old_target), wd).run()
        out[method] = _losses(wd)
    source = root / "source"
    Trainer(tiny_config(total_steps=STEPS, **{"model.num_classes": 5, "data.classes": (0, 1, 2, 3, 4)}), source).run()
    probe = tiny_config(recipe="linear_probe", total_steps=STEPS, **{
        "model.num_classes": 5, "data.classes": (5, 6, 7, 8, 9), "model.init": str(source), "optim.lr": 0.5})
    Trainer(probe, root / "probe").run()
    out["source"], out["linear_probe"] = _losses(source), _losses(root / "probe")
    cfgs = [da_config("dann", total_steps=STEPS, seed=s, **old_target) for s in (0, 1)]
    VectorTrainer(cfgs, [root / f"sweep{s}" for s in (0, 1)]).run()
    for s in (0, 1):
        out[f"sweep_member{s}"] = _losses(root / f"sweep{s}")
    return out


def test_losses_equal_the_recorded_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))
    # The reference ran XLA's own convolution weight gradient; the tap-by-tap one that jtl now
    # uses for inputs of few channels sums in another order (checked against XLA's in
    # tests/test_perf_numerics.py), so this test of the training code keeps XLA's.
    from jtl.models import layers

    monkeypatch.setattr(layers, "FEW_INPUT_CHANNELS", 0)
    want = json.loads(REFERENCE.read_text())
    got = run_cases(tmp_path)
    assert set(got) == set(want["cases"])
    for case, series in want["cases"].items():
        assert set(got[case]) == set(series), case
        for name, values in series.items():
            assert len(got[case][name]) == len(values) == STEPS, (case, name)
            np.testing.assert_allclose(got[case][name], values, rtol=1e-6, atol=1e-7, err_msg=f"{case} {name}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"] or len(sys.argv) != 3:
        sys.exit("usage: test_numbers_unchanged.py --record OUT.json")
    import os
    import subprocess

    with tempfile.TemporaryDirectory() as d:
        os.environ["JTL_DATA_DIR"] = str(Path(d) / "data")
        cases = run_cases(Path(d))
    import jtl

    commit = subprocess.run(["git", "-C", str(Path(jtl.__file__).parents[1]), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    Path(sys.argv[2]).write_text(json.dumps({"commit": commit, "steps": STEPS, "cases": cases}, indent=1) + "\n")
