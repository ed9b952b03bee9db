"""Your own domains (issue 21): split folders, the target's splits, selection on a named split,
``jtl da-results`` on any config, ``jtl data show NAME[:SPLIT]``.

References: file lists and class counts from ``os`` listings, the selection scores from numpy
formulas on the saved predictions, the final accuracy from images read with PIL and the run's
own logits, and every file the library opens recorded by a hook on ``builtins.open`` (what PIL
opens images with). The whole study (3 methods x 2 seeds, ~1-10 min of compiling) is slow.
"""

from __future__ import annotations

import builtins
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train_helpers import one_line_error, run_jtl

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("ant", "bee", "cat")


def _images(folder: Path, cls: int, n: int, shift: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = np.clip(rng.normal(40 + 80 * cls + shift, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(x).save(folder / f"{i:02d}.png")


def make_domains(root: Path, n_source=20, n_train=12, n_test=6, test_classes=CLASSES) -> tuple[Path, Path]:
    """A labelled source ``src/<class>/`` and a split target ``tgt/{train,test}/<class>/`` (16 px)."""
    for k, c in enumerate(CLASSES):
        _images(root / "src" / c, k, n_source, 0, k)
        _images(root / "tgt" / "train" / c, k, n_train, 40, 10 + k)
        if c in test_classes:
            _images(root / "tgt" / "test" / c, k, n_test, 40, 20 + k)
    return root / "src", root / "tgt"


def listed(folder: Path) -> set[str]:
    return {str(Path(d) / f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".png")}


@pytest.fixture
def opened(monkeypatch):
    """Every path opened through ``builtins.open`` while the test runs, in order."""
    paths: list[str] = []
    real = builtins.open

    def spy(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)):
            paths.append(os.path.abspath(os.fspath(file)))
        return real(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    return paths


# ------------------------------------------------------------------------------- split folders


def test_split_folder_reads_only_the_split_asked_for(tmp_path, opened):
    from jtl import data as jdata

    _, tgt = make_domains(tmp_path, test_classes=("ant", "cat"))
    opened.clear()  # the writes
    info = jdata.info(f"folder:{tgt}")
    assert info.class_names == CLASSES and info.splits == ("train", "test")
    assert not [p for p in opened if p.endswith(".png")], "info() opened images"
    train = jdata.load(f"folder:{tgt}", "train")
    assert set(train.files) == listed(tgt / "train")  # every train image: no val carved by default
    assert not [p for p in opened if p.startswith(str(tgt / "test"))]
    test = jdata.load(f"folder:{tgt}", "test")
    assert set(test.files) == listed(tgt / "test")
    # labels by name: the test split lacks "bee", so "cat" keeps label 2
    assert [CLASSES[y] for y in test.labels] == [Path(f).parent.name for f in test.files]
    assert any(p.startswith(str(tgt / "test")) for p in opened)


def test_split_folder_carves_val_from_train_only_when_asked(tmp_path):
    from jtl import data as jdata

    _, tgt = make_domains(tmp_path)
    val = jdata.load(f"folder:{tgt}", "val", val_fraction=0.25)
    train = jdata.load(f"folder:{tgt}", "train", val_fraction=0.25)
    assert not set(val.files) & set(train.files) and set(val.files) | set(train.files) == listed(tgt / "train")
    assert np.bincount(val.labels).tolist() == [round(0.25 * 12)] * 3  # stratified: a quarter of each class
    one_line_error(run_jtl("data", "stats", f"folder:{tgt}", "-o", "val_fraction=2"), "val_fraction")


# ------------------------------------------------------------------------------- issue 21, bugs 1 and 2


def test_test_fraction_is_a_config_key_and_the_target_has_its_own(tmp_path):
    """Bug 1: data.test_fraction was an unknown key, and a folder target had no test split."""
    from jtl import data as jdata
    from jtl.config import load_config
    from jtl.data.splits import run_fractions
    from jtl.errors import ConfigError, DataError

    src, tgt = make_domains(tmp_path, n_train=20)
    plain = tgt / "train"  # a plain folder <class>/*.png as the target
    cfg = load_config(f"{ROOT}/configs/da_folder.py:dann,source={src},target={plain},test_fraction=0.25",
                      ["data.test_fraction=0.5"])
    assert cfg.data.test_fraction == 0.5 and cfg.adapt.target_test_fraction == 0.25
    test = jdata.load(cfg.adapt.target, "test", seed=cfg.seed, **run_fractions(cfg, cfg.adapt.target))
    train = jdata.load(cfg.adapt.target, "train", seed=cfg.seed, **run_fractions(cfg, cfg.adapt.target))
    assert np.bincount(test.labels).tolist() == [5, 5, 5]  # 25% of each class of 20, not data.test_fraction's 50%
    assert len(train) + len(test) == 60 and not set(train.files) & set(test.files)
    no_test = load_config(f"{ROOT}/configs/da_folder.py:dann,source={src},target={plain}")
    with pytest.raises(DataError, match="test_fraction"):
        jdata.load(no_test.adapt.target, "test", **run_fractions(no_test, no_test.adapt.target))
    with pytest.raises(ConfigError, match="data.test and data.eval both label"):  # held out, or evaluated: not both
        load_config(f"{ROOT}/configs/da_folder.py:dann,source={src},target={plain}",
                    [f"data.eval=('target_test=folder:{plain}:train',)"])
    with pytest.raises(ConfigError, match="adapt.target val_fraction=0.5 and test_fraction=0.5"):
        load_config(f"{ROOT}/configs/da_folder.py:dann,source={src},target={plain},test_fraction=0.5,val_fraction=0.5")


def test_adaptation_uses_every_target_image(tmp_path, monkeypatch):
    """Bug 2: a plain folder target lost its default 20% val split from adaptation."""
    from jtl import data as jdata
    from jtl.config import resolve
    from jtl.train.adapt import AdaptationTask
    from jtl.train.steps import make_mesh

    src, _ = make_domains(tmp_path)
    plain_target = tmp_path / "tgt" / "train"  # a plain folder <class>/*.png
    cfg = resolve({"model": {"num_classes": 3}, "batch_size": 8, "loss": {"ce": 1.0, "dann": 1.0},
                   "data": {"train": f"folder:{src}", "image_size": 16, "eval": (f"folder:{src}:all",)},
                   "adapt": {"target": f"folder:{plain_target}"}})
    seen = {}
    real = jdata.make_iterator

    class Built(Exception):
        pass

    def record(source, **kw):  # the target's input pipeline is built: what it adapts on is known
        seen[source.name] = source
        if source.name == cfg.adapt.target:
            raise Built
        return real(source, **kw)

    monkeypatch.setattr(jdata, "make_iterator", record)
    with pytest.raises(Built):
        AdaptationTask(cfg, make_mesh())
    assert set(seen[f"folder:{plain_target}"].files) == listed(plain_target)


# ------------------------------------------------------------------------------- bugs 3 and 4: selection split


def _im(logits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
    return float(h(p.mean(0)) - h(p).mean())


def test_selection_scores_use_the_named_split(tmp_path):
    """Bug 4: SND/IM/DEV were computed from the test predictions; now from ``target_label``."""
    from jtl.results import load_run, run_scores

    rng = np.random.default_rng(0)
    run_dir = tmp_path / "run"
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"step": 5, "final": {"target_test": {"top1": 0.5}}}))
    arrays = {label: {"logits": rng.normal(size=(40, 3)) * s, "features": rng.normal(size=(40, 4)),
                      "labels": rng.integers(0, 3, 40)} for label, s in
              (("source_val", 1.0), ("target_select", 3.0), ("target_test", 0.2))}
    for label, a in arrays.items():
        np.savez(run_dir / "predictions" / f"{label}-5.npz", **a)
    scores = run_scores(load_run(run_dir), ["im"], "target_test/top1", "source_val", "target_select")
    assert scores["im"] == pytest.approx(_im(arrays["target_select"]["logits"]), rel=1e-12)
    assert scores["im"] != pytest.approx(_im(arrays["target_test"]["logits"]), rel=1e-3)


def test_collect_selects_on_the_target_label(tmp_path):
    """``jtl collect --target-label``: IM's pick per seed is the numpy argmax over target_select's logits."""
    rng = np.random.default_rng(1)
    im = {}
    for method in ("dann", "mcc"):
        for seed in (0, 1):
            run_dir = tmp_path / f"{method}{seed}"
            (run_dir / "predictions").mkdir(parents=True)
            (run_dir / "config.json").write_text(json.dumps({"seed": seed, "loss": {"ce": 1.0, method: 1.0}}))
            top1 = float(rng.uniform())
            (run_dir / "summary.json").write_text(json.dumps({"step": 3, "final": {"target_test": {"top1": top1}}}))
            for label, scale in (("target_select", rng.uniform(0.1, 3)), ("target_test", rng.uniform(0.1, 3))):
                logits = rng.normal(size=(30, 4)) * scale
                np.savez(run_dir / "predictions" / f"{label}-3.npz", logits=logits, features=logits,
                         labels=rng.integers(0, 4, 30))
                if label == "target_select":
                    im[method, seed] = (_im(logits), top1)
    rc, out, err = run_jtl("collect", tmp_path, "--metric", "target_test/top1", "--select", "im",
                           "--target-label", "target_select", "--group-by", "loss")
    assert rc == 0, err
    picks = [max(("dann", "mcc"), key=lambda m: im[m, s][0]) for s in (0, 1)]
    expected = np.mean([100 * im[m, s][1] for m, s in zip(picks, (0, 1))])
    row = next(ln for ln in out.splitlines() if ln.startswith("| im"))
    assert f"{expected:.2f}" in row, (row, picks)


def test_per_class_table_rows_come_back_from_the_confusion_matrix():
    """The report's per-class test accuracy is rebuilt from the final evaluation's confusion matrix."""
    from jtl.results.da_report import _confusion_pairs

    cm = np.array([[3, 1, 0], [0, 0, 2], [4, 0, 5]])
    onehot, labels = _confusion_pairs(cm)
    rebuilt = np.zeros_like(cm)
    np.add.at(rebuilt, (labels, onehot.argmax(1)), 1)
    assert (rebuilt == cm).all() and len(labels) == cm.sum()


def test_da_results_refuses_bad_input_in_one_line(tmp_path):
    one_line_error(run_jtl("da-results", "--config", str(ROOT / "configs/da_folder.py"), "--methods", "dann,nope",
                           "--workdir", tmp_path), "unknown method or control nope")
    one_line_error(run_jtl("da-results", "--config", str(tmp_path / "none.py"), "--workdir", tmp_path),
                   "config file not found")
    one_line_error(run_jtl("da-results", "--config", str(ROOT / "configs/da_folder.py"), "--seeds", "0,x",
                           "--workdir", tmp_path), "--seeds")
    assert not (tmp_path / "results.md").exists()


# ------------------------------------------------------------------------------- bug 5: NAME[:SPLIT]


def test_data_show_takes_a_split_per_name(tmp_path):
    src, tgt = make_domains(tmp_path)
    rc, out, err = run_jtl("data", "show", f"folder:{src}", f"folder:{tgt}:test", "--split", "all",
                           "--out", tmp_path / "grid.png")
    assert rc == 0, err
    assert Image.open(tmp_path / "grid.png").size[0] > 0
    from jtl.data.cli import _rows, name_and_split

    assert name_and_split("fashion_mnist:mnistm", "train") == ("fashion_mnist:mnistm", "train")
    assert name_and_split("fashion_mnist:mnistm:test", "train") == ("fashion_mnist:mnistm", "test")
    assert name_and_split("digits:mnistm+rotate@30#1:all", "x") == ("digits:mnistm+rotate@30#1", "all")
    assert name_and_split("folder:/data/x:val", "train") == ("folder:/data/x", "val")
    assert name_and_split("folder:test", "train") == ("folder:test", "train")  # a folder named test
    assert name_and_split("tfds:cifar10:train[:10%]", "test") == ("tfds:cifar10", "train[:10%]")
    rows = _rows([f"folder:{src}", f"folder:{tgt}:test"], "all", 4, 0, {"seed": 0})
    assert [r[1].split for r in rows] == ["all", "test"]
    assert set(rows[1][1].files) == listed(tgt / "test")


# ------------------------------------------------------------------------------- the whole study


def _cells(table_line: str) -> list[str]:
    return [c.strip() for c in table_line.strip().strip("|").split("|")]


@pytest.mark.slow
def test_own_domains_study_selects_on_target_train_and_reads_test_last(tmp_path, monkeypatch, opened):
    """Acceptance: source-only and two methods over 2 seeds on a user's two folders; selection on
    the target training split; no test image opened before the final evaluation."""
    import jtl.results.da_report as da_report
    from jtl.train.inference import RunModel

    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))
    src, tgt = make_domains(tmp_path)
    opened.clear()  # the writes
    test_dir = str(tgt / "test")
    marks = {}
    real_final, real_score = da_report.add_final_accuracy, da_report.score_runs

    def final(*a, **kw):
        marks["final"] = len(opened)
        return real_final(*a, **kw)

    def score(*a, **kw):
        marks["scored"] = len(opened)
        return real_score(*a, **kw)

    monkeypatch.setattr(da_report, "add_final_accuracy", final)
    monkeypatch.setattr(da_report, "score_runs", score)
    config = f"{ROOT}/configs/da_folder.py:source={src},target={tgt},size=16,steps=6,batch=16"
    out = tmp_path / "results.md"
    rc, stdout, err = run_jtl("da-results", "--config", config, "--methods", "source_only,dann,mcc", "--seeds", "0,1",
                              "--controls", "", "--workdir", tmp_path / "runs", "--out", out,
                              "--figures", tmp_path / "fig", "--config.eval_every=3")
    assert rc == 0, err[-3000:]
    before, after = opened[: marks["final"]], opened[marks["final"]:]
    assert marks["scored"] < marks["final"]
    assert not [p for p in before if p.startswith(test_dir)], "a test image was read before the final evaluation"
    assert {p for p in after if p.startswith(test_dir)} == listed(tgt / "test")
    assert listed(tgt / "train") <= set(before)  # the unlabelled target images were adapted on and scored

    text = out.read_text()
    assert f"`target_select` = `folder:{tgt}:train` (labels unused)" in text
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("| method | target top-1"))
    assert _cells(lines[head])[3:6] == ["SND (target_select)", "IM (target_select)", "DEV (target_select)"]
    runs = {}
    for method in ("source_only", "dann", "mcc"):
        sweep = json.loads((tmp_path / "runs" / "folder" / method / "sweep.json").read_text())
        runs[method] = {m["overrides"]["seed"]: tmp_path / "runs" / "folder" / method / m["workdir"]
                        for m in sweep["members"]}
    test_x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(listed(tgt / "test"))])
    test_y = np.array([CLASSES.index(Path(f).parent.name) for f in sorted(listed(tgt / "test"))])
    im, acc = {}, {}
    for method, by_seed in runs.items():
        for seed, wd in by_seed.items():
            sel = np.load(wd / "predictions" / "target_select-6.npz")
            assert len(sel["logits"]) == len(listed(tgt / "train"))
            im[method, seed] = _im(sel["logits"].astype(np.float64))
            acc[method, seed] = float(np.mean(RunModel(wd).logits(test_x).argmax(-1) == test_y))
            kept = json.loads((wd / "eval_target_test_step6.json").read_text())
            assert kept["top1"] == pytest.approx(acc[method, seed])
        row = _cells(next(ln for ln in lines[head:] if ln.startswith(f"| {method} |")))
        a, i = np.array([acc[method, s] for s in (0, 1)]), np.array([im[method, s] for s in (0, 1)])
        assert row[1] == f"{100 * a.mean():.2f} +- {100 * a.std():.2f}"
        assert row[4] == f"{i.mean():.2f} +- {i.std():.2f}"
    picks = [max(("source_only", "dann", "mcc"), key=lambda m: im[m, s]) for s in (0, 1)]
    im_row = _cells(next(ln for ln in lines if ln.startswith("| im |")))
    assert im_row[1] == ", ".join(picks)
    assert im_row[2].startswith(f"{100 * np.mean([acc[m, s] for m, s in zip(picks, (0, 1))]):.2f} +- ")
    assert re.search(r"\| source_only \| \d\.\d{3} \|", text)  # its proxy A-distance
    assert (tmp_path / "fig" / "tsne_folder_source_only.png").is_file()
