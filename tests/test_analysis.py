"""jtl.analysis: proxy A-distance, t-SNE plot, per-class accuracy tables."""

import math

import numpy as np
import pytest

from jtl.analysis import per_class_accuracy, per_class_table, proxy_a_distance, tsne_plot
from jtl.errors import ConfigError, DataError

# ------------------------------------------------------------------ proxy A-distance


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_a_distance_identical_domains_near_zero(classifier):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(600, 10))
    d, eps = proxy_a_distance(f, f.copy(), classifier=classifier, return_error=True)
    assert 0.0 <= d < 0.3
    assert eps > 0.42
    raw = proxy_a_distance(f, f.copy(), classifier=classifier, clip=False)
    assert raw < 0.3  # may be slightly negative: clipped by default


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_a_distance_separated_domains_near_two(classifier):
    rng = np.random.default_rng(1)
    fs = rng.normal(size=(400, 10))
    ft = rng.normal(size=(400, 10)) + 4.0
    assert proxy_a_distance(fs, ft, classifier=classifier) == pytest.approx(2.0, abs=0.02)


def test_a_distance_formula_on_known_overlap():
    # 1-D: source U[0, 1], target U[0.5, 1.5]. The best linear rule (threshold 0.75) errs
    # on a quarter of each domain: eps = 1/4, d_A = 2 (1 - 2/4) = 1.
    rng = np.random.default_rng(2)
    fs, ft = rng.uniform(0, 1, 4000), rng.uniform(0.5, 1.5, 4000)
    d, eps = proxy_a_distance(fs, ft, return_error=True, clip=False)
    assert d == pytest.approx(2 * (1 - 2 * eps))
    assert eps == pytest.approx(0.25, abs=0.03)
    assert d == pytest.approx(1.0, abs=0.12)


def test_a_distance_balances_unequal_domains():
    # 100 vs 900 samples of one distribution: an unbalanced majority rule would score 0.9
    # accuracy (d_A = 1.6); balancing keeps chance at 1/2.
    rng = np.random.default_rng(3)
    d = proxy_a_distance(rng.normal(size=(100, 4)), rng.normal(size=(900, 4)))
    assert d < 0.6


def test_a_distance_errors():
    with pytest.raises(ConfigError):
        proxy_a_distance(np.zeros((4, 2)), np.zeros((4, 2)), classifier="mlp")
    with pytest.raises(DataError):
        proxy_a_distance(np.zeros((4, 2)), np.zeros((4, 3)))


# ------------------------------------------------------------------ t-SNE


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_tsne_plot_writes_png(tmp_path):
    rng = np.random.default_rng(4)
    fs, ft = rng.normal(size=(60, 8)), rng.normal(size=(50, 8)) + 2
    out = tsne_plot(fs, ft, tmp_path / "plots" / "tsne.png")
    assert out == tmp_path / "plots" / "tsne.png"
    w, h = _png_size(out)
    assert w > 100 and h > 100
    assert sorted(p.name for p in out.parent.iterdir()) == ["tsne.png"]  # no temp files left


def test_tsne_plot_with_labels_and_subsampling(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(5)
    fs, ft = rng.normal(size=(200, 8)), rng.normal(size=(80, 8)) + 2
    ys, yt = rng.integers(0, 3, 200), rng.integers(0, 3, 80)
    out = tsne_plot(fs, ft, tmp_path / "a.png", source_labels=ys, target_labels=yt, max_points=60, seed=1)
    img = matplotlib.image.imread(out)  # decodes: a valid image
    w, h = _png_size(out)
    assert img.shape[:2] == (h, w) and w > h  # two panels side by side
    # only one labelled domain is fine too
    tsne_plot(fs, ft, tmp_path / "b.png", source_labels=ys, max_points=40)
    assert _png_size(tmp_path / "b.png")[0] > 100


def test_tsne_plot_errors(tmp_path):
    with pytest.raises(DataError):
        tsne_plot(np.zeros((10, 3)), np.zeros((10, 4)), tmp_path / "x.png")
    with pytest.raises(DataError):
        tsne_plot(np.zeros((10, 3)), np.zeros((10, 3)), tmp_path / "x.png", source_labels=[0, 1])
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ per-class accuracy


def test_per_class_accuracy_rows_and_table():
    names = ["cat", "dog", "a|b"]
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 1, 1, 1, 1, 0, 2, 2])
    logits = np.eye(3)[preds] * 3.0
    rows = per_class_accuracy(logits, labels, names)
    # reference by counting
    for k, r in enumerate(rows):
        mask = labels == k
        assert r["support"] == mask.sum()
        assert r["correct"] == (preds[mask] == k).sum()
        assert r["accuracy"] == pytest.approx((preds[mask] == k).mean())
    assert rows[0]["confused_with"] == "dog" and rows[1]["confused_with"] is None
    table = per_class_table(logits, labels, names, title="target")
    lines = table.splitlines()
    assert lines[0] == "### target"
    assert "| cat | 4 | 2 | 50.0 | dog |" in lines
    assert "| a\\|b | 3 | 2 | 66.7 | cat |" in lines
    assert any(l.startswith("| **overall** | 9 | 6 | 66.7") for l in lines)
    mean_pc = 100 * (0.5 + 1.0 + 2 / 3) / 3
    assert any(l.startswith("| **mean per class**") and f"{mean_pc:.1f}" in l for l in lines)
    # worst class first
    sorted_table = per_class_table(logits, labels, names, sort_by_accuracy=True)
    assert sorted_table.splitlines()[2].startswith("| cat |")


def test_per_class_empty_class_and_errors():
    logits = np.eye(3)[[0, 1, 1]]
    rows = per_class_accuracy(logits, np.array([0, 1, 1]))
    assert rows[2]["support"] == 0 and math.isnan(rows[2]["accuracy"])
    assert "| 2 | 0 | 0 | - | - |" in per_class_table(logits, np.array([0, 1, 1]))
    with pytest.raises(DataError):
        per_class_accuracy(logits, np.array([0, 1, 1]), ["a", "b"])
    with pytest.raises(DataError):
        per_class_accuracy(logits, np.array([0, 1, 3]))
