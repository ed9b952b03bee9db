"""``jtl collect``: fake run directories in, tables, selection and a plot out."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from jtl import results as C
from jtl import select as S
from jtl.cli import main

LRS, SEEDS = (0.1, 0.01, 0.001), (0, 1, 2)


def write_run(d: Path, config: dict, *, top1: float | None, wall: float = 10.0, rng=None, step: int = 100,
              source_top1: float | None = None) -> None:
    """A finished run: config.json, summary.json and (with ``rng``) predictions npz files."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    if top1 is None:
        return
    final = {"target_test": {"top1": top1, "top5": 1.0}}
    if source_top1 is not None:
        final["source_val"] = {"top1": source_top1, "top5": 1.0}
    (d / "summary.json").write_text(json.dumps({"step": step, "final": final, "best_step": step,
                                                "wall_time_s": wall}))
    if rng is not None:
        (d / "predictions").mkdir()
        for label, n in (("source_val", 40), ("target_test", 30)):
            np.savez(d / "predictions" / f"{label}-{step}.npz", logits=rng.normal(0, 2, (n, 4)),
                     features=rng.normal(0, 1, (n, 5)) + (0.5 if label == "target_test" else 0.0),
                     labels=rng.integers(0, 4, n))


def config(seed, lr, **extra) -> dict:
    return {"seed": seed, "progress": False, "loss": [["ce", 1.0]], "optim": {"name": "sgd", "lr": lr},
            "model": {"name": "cifar_resnet8", "init": f"/runs/src/seed{seed}"}, **extra}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep of lr x seed (predictions saved), plus one failed and one missing member."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    members, truth = [], {}
    for lr in LRS:
        for seed in SEEDS:
            name = f"lr{lr}-s{seed}"
            over = {"optim.lr": lr, "seed": seed}
            members.append({"name": name, "overrides": over, "workdir": name})
            acc = float(rng.uniform(0.5, 0.9))
            truth[(lr, seed)] = acc
            write_run(root / name, config(seed, lr), top1=acc, wall=float(rng.uniform(5, 20)), rng=rng)
            (root / name / "overrides.json").write_text(json.dumps(over))
    members.append({"name": "bad", "overrides": {"optim.lr": 10.0, "seed": 0}, "workdir": str(root / "bad")})
    (root / "bad").mkdir()
    (root / "bad" / "overrides.json").write_text(json.dumps({"optim.lr": 10.0, "seed": 0}))
    (root / "bad" / "failed.json").write_text(json.dumps({"error": "loss became nan at step 3", "traceback": "..."}))
    members.append({"name": "gone", "overrides": {"optim.lr": 1.0, "seed": 0}, "workdir": "gone"})
    (root / "sweep.json").write_text(json.dumps({"config": "configs/x.py:a", "members": members}))
    return root, truth


def test_discover_and_aggregate(sweep):
    root, truth = sweep
    runs = C.discover([root])
    assert len(runs) == 11
    status = {r.path.name: r.status for r in runs}
    assert status["bad"] == "failed" and status["gone"] == "missing"
    assert next(r for r in runs if r.path.name == "bad").reason == "loss became nan at step 3"
    finished = [r for r in runs if r.status == "finished"]
    keys, tied = C.default_group_keys(finished)
    assert keys == ["optim.lr"] and tied == ["model.init"]  # the per-seed init path is not a setting
    settings = C.aggregate(finished, keys, "target_test/top1")
    assert [s.key for s in settings] == [(0.001,), (0.01,), (0.1,)]
    for s in settings:
        ref = np.array([truth[(s.key[0], seed)] for seed in SEEDS])
        assert sorted(s.seeds) == list(SEEDS)
        assert s.mean() == pytest.approx(ref.mean(), abs=1e-12)
        assert s.std() == pytest.approx(ref.std(), abs=1e-12)


def direct_scores(run_dir: Path) -> dict:
    sv = np.load(run_dir / "predictions" / "source_val-100.npz")
    tg = np.load(run_dir / "predictions" / "target_test-100.npz")
    h = len(sv["labels"]) // 2
    return {
        "source_val": S.source_val_accuracy(sv["logits"], sv["labels"]),
        "snd": S.snd(tg["logits"]),
        "im": S.information_maximization_score(tg["logits"]),
        "dev": S.dev_risk(sv["features"][:h], tg["features"], sv["features"][h:],
                          S.per_sample_cross_entropy(sv["logits"][h:], sv["labels"][h:])),
    }


def test_report_selection_matches_direct_computation(sweep):
    root, truth = sweep
    report = C.collect([root])
    assert report.metric == "target_test/top1" and report.percent and report.keys == ["optim.lr"]
    assert [r.path.name for r in report.failed] == ["bad"] and [r.path.name for r in report.missing] == ["gone"]
    rows = {r.method: r for r in report.selection}
    assert list(rows) == list(C.DEFAULT_SELECT)
    scores = {(lr, seed): direct_scores(root / f"lr{lr}-s{seed}") for lr in LRS for seed in SEEDS}
    for method, row in rows.items():
        better = max if S.METHODS[method].higher_is_better else min
        picks = []
        for seed in SEEDS:
            if method == "oracle":
                lr = max(LRS, key=lambda lr: truth[(lr, seed)])
            else:
                lr = better(LRS, key=lambda lr: scores[(lr, seed)][method])
            picks.append((seed, f"optim.lr={lr:g}", truth[(lr, seed)]))
        assert row.picks == picks, method
        vals = np.array([v for _, _, v in picks])
        assert row.mean() == pytest.approx(vals.mean()) and row.std() == pytest.approx(vals.std())
    assert rows["oracle"].label == "oracle (uses target labels)" and rows["oracle"].uses_target_labels
    assert rows["oracle"].mean() >= max(r.mean() for r in report.selection) - 1e-12

    md = C.render_markdown(report)
    assert "| oracle (uses target labels) |" in md
    assert "Failed runs (1):" in md and "bad: loss became nan at step 3 (optim.lr=10, seed=0)" in md
    assert "Missing runs (1):" in md and "gone: no run directory" in md
    assert "Not grouped by model.init" in md


def test_csv_and_latex(sweep):
    root, truth = sweep
    report = C.collect([root], select=["snd", "oracle"])
    rows = list(csv.DictReader(io.StringIO(C.render_csv(report))))
    settings = [r for r in rows if r["table"] == "settings"]
    assert [r["optim.lr"] for r in settings] == ["0.001", "0.01", "0.1"]
    for r in settings:
        ref = 100 * np.array([truth[(float(r["optim.lr"]), seed)] for seed in SEEDS])
        assert int(r["n"]) == 3 and r["seeds"] == "0 1 2"
        assert float(r["mean"]) == pytest.approx(ref.mean(), abs=1e-9)
        assert float(r["std"]) == pytest.approx(ref.std(), abs=1e-9)
    sel = {r["selection"]: r for r in rows if r["table"] == "selection"}
    assert set(sel) == {"snd", "oracle (uses target labels)"}
    for row in report.selection:
        assert float(sel[row.label]["mean"]) == pytest.approx(100 * row.mean(), abs=1e-9)

    tex = C.render_latex(report)
    tabulars = re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", tex, re.S)
    assert len(tabulars) == 2
    body = lambda t: [ln for ln in t.splitlines() if ln.endswith(r"\\")]  # header + data rows
    assert len(body(tabulars[0])) == 1 + 3 and len(body(tabulars[1])) == 1 + 2
    assert r"$\pm$" in tex and r"target\_test/top1 (\%)" in tex and r"\textbf{" in tex


def test_cli_table_plot_and_problems(sweep, tmp_path, capsys):
    from PIL import Image

    root, _ = sweep
    out, png = tmp_path / "res.csv", tmp_path / "lr.png"
    assert main(["collect", str(root), "--select", "source_val,oracle", "--out", str(out),
                 "--plot", "optim.lr", "--plot-out", str(png)]) == 0
    cap = capsys.readouterr()
    assert out.read_text().startswith("table,selection,optim.lr,n,seeds,mean,std,wall_time_s,picked")
    assert "1 failed and 1 missing runs" in cap.err and "loss became nan at step 3" in cap.err
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100

    assert main(["collect", str(root), "--select", "none", "--group-by", "none"]) == 0
    cap = capsys.readouterr()
    assert "| all runs | 9 |" in cap.out and "Model selection" not in cap.out
    assert "Failed runs (1):" in cap.out


def test_plain_runs_without_sweep_or_predictions(tmp_path, capsys):
    """Runs not from a sweep: settings come from config.json; source_val falls back to the summary."""
    vals = {}
    for loss in ("dann", "mcc"):
        for seed in (0, 1):
            acc, src = 0.6 + 0.1 * seed + (0.05 if loss == "mcc" else 0), 0.9 - 0.01 * seed - (loss == "mcc") * 0.1
            vals[(loss, seed)] = acc
            cfg = config(seed, 0.01, method=loss, total_steps=10 if loss == "dann" else 20)
            write_run(tmp_path / "runs" / loss / f"s{seed}", cfg, top1=acc, source_top1=src)
    write_run(tmp_path / "runs" / "unfinished", config(5, 0.01), top1=None)
    report = C.collect([tmp_path / "runs"], group_by=["method"], select=["source_val", "snd"])
    assert [s.key for s in report.settings] == [("dann",), ("mcc",)]
    assert report.settings[1].mean() == pytest.approx(np.mean([vals[("mcc", 0)], vals[("mcc", 1)]]))
    rows = {r.method: r for r in report.selection}
    assert [lab for _, lab, _ in rows["source_val"].picks] == ["method=dann", "method=dann"]
    assert rows["snd"].picks == [] and "save_predictions=True" in rows["snd"].unavailable[0][1]
    assert [r.path.name for r in report.missing] == ["unfinished"]
    # by default: every key that varies, except the seed and the per-seed init path
    default = C.collect([tmp_path / "runs"], select=["source_val"])
    assert default.keys == ["method", "total_steps"] and default.tied_keys == ["model.init"]
    # keys that vary together: picks are labelled by the fewest keys that tell settings apart
    assert [lab for _, lab, _ in default.selection[0].picks] == ["method=dann", "method=dann"]
    png = C.plot(default.finished, "method", default.keys, default.metric, tmp_path / "m.png")  # categorical x
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["collect", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jtl: error: no runs under") and "\n" not in err
    assert main(["collect", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err

    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "a" / "failed.json").write_text(json.dumps({"error": "boom", "traceback": "x"}))
    assert main(["collect", str(tmp_path / "f")]) == 2
    assert "no finished run" in capsys.readouterr().err

    write_run(tmp_path / "r" / "a", config(0, 0.1), top1=0.5)
    for args, msg in ((["--metric", "test/top1"], "no finished run has metric 'test/top1'; available: target_test"),
                      (["--group-by", "optim.nope"], "--group-by key 'optim.nope' is in no run's config"),
                      (["--plot", "optim.lr"], "does not vary"),
                      (["--select", "magic"], "unknown selection method 'magic'")):
        assert main(["collect", str(tmp_path / "r"), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err


def test_vectorized_members_count_their_share_of_the_wall_time(tmp_path):
    for seed in SEEDS:
        write_run(tmp_path / f"s{seed}", config(seed, 0.1), top1=0.5 + 0.1 * seed, wall=30.0)
        summary = json.loads((tmp_path / f"s{seed}" / "summary.json").read_text())
        (tmp_path / f"s{seed}" / "summary.json").write_text(json.dumps({**summary, "vectorized_members": 3}))
    report = C.collect([tmp_path], select=())
    assert [s.wall_times for s in report.settings] == [[10.0, 10.0, 10.0]]


def test_first_seen_order_given_seeds_and_table_writer(tmp_path):
    """What scripts/da_results.py uses: settings in first-run order, picks on the seeds asked for
    (in that order; a seed no setting has is skipped), and the markdown table writer."""
    for name, lr in (("b", 0.1), ("a", 0.01)):
        for seed in (0, 1):
            write_run(tmp_path / f"{name}{seed}", config(seed, lr, method=name), top1=0.5 + lr + 0.1 * seed)
    runs = sorted(C.discover([tmp_path]), key=lambda r: r.params["method"], reverse=True)
    settings = C.aggregate(runs, ["method"], "target_test/top1", sort=False)
    assert [s.key for s in settings] == [("b",), ("a",)]
    (row,) = C.select_settings(settings, ["method"], ["oracle"], "target_test/top1", seeds=[1, 7, 0])
    assert [(sd, lab) for sd, lab, _ in row.picks] == [(1, "method=b"), (0, "method=b")] and not row.unavailable
    assert C.markdown_table(["k", "v"], "lr", [["a|b", "1"]]) == ["| k | v |", "|---|---:|", "| a\\|b | 1 |"]
