"""Unsupervised model selection (jtl.select) against loop references written from the papers."""

import math

import numpy as np
import pytest

from jtl import select as S
from jtl.errors import ConfigError, DataError


# ------------------------------------------------------------------ loop references


def ref_softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def ref_entropy(p):
    return -sum(v * math.log(v) for v in p if v > 0)


def ref_snd(logits, temperature):
    """Saito et al. 2021, Eq. 1-3, one sample at a time."""
    probs = [ref_softmax_row(list(z)) for z in logits]
    feats = []
    for p in probs:
        norm = math.sqrt(sum(v * v for v in p))
        feats.append([v / norm for v in p])
    n = len(feats)
    total = 0.0
    for i in range(n):
        sims = [sum(a * b for a, b in zip(feats[i], feats[j])) / temperature for j in range(n) if j != i]
        m = max(sims)
        e = [math.exp(s - m) for s in sims]
        z = sum(e)
        total += ref_entropy([v / z for v in e])
    return total / n


def ref_im(logits):
    probs = [ref_softmax_row(list(z)) for z in logits]
    n, c = len(probs), len(probs[0])
    p_bar = [sum(p[k] for p in probs) / n for k in range(c)]
    return ref_entropy(p_bar) - sum(ref_entropy(p) for p in probs) / n


def ref_dev_from_weights(w, losses):
    """You et al. 2019, Algorithm 1 steps 4-6: L = w l, eta = -Cov(L, W)/Var(W)."""
    n = len(w)
    big_l = [wi * li for wi, li in zip(w, losses)]
    mean_l, mean_w = sum(big_l) / n, sum(w) / n
    cov = sum((a - mean_l) * (b - mean_w) for a, b in zip(big_l, w)) / (n - 1)
    var = sum((b - mean_w) ** 2 for b in w) / (n - 1)
    eta = -cov / var
    return mean_l + eta * mean_w - eta


def ref_accuracy(logits, labels):
    return sum(int(max(range(len(z)), key=lambda k: z[k]) == y) for z, y in zip(logits, labels)) / len(labels)


# ------------------------------------------------------------------ score functions


def test_accuracies_match_reference():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(50, 4)), rng.integers(0, 4, 50)
    assert S.source_val_accuracy(z, y) == pytest.approx(ref_accuracy(z.tolist(), y.tolist()))
    assert S.oracle_target_accuracy(z, y) == pytest.approx(ref_accuracy(z.tolist(), y.tolist()))
    assert S.source_val_accuracy(np.eye(3) * 5, np.arange(3)) == 1.0


def test_per_sample_cross_entropy():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(20, 5)), rng.integers(0, 5, 20)
    ref = [-math.log(ref_softmax_row(list(zi))[yi]) for zi, yi in zip(z, y)]
    np.testing.assert_allclose(S.per_sample_cross_entropy(z, y), ref, rtol=1e-10)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_snd_matches_loop_reference(temperature):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, size=(40, 6))
    expected = ref_snd(z, temperature)
    assert S.snd(z, temperature=temperature) == pytest.approx(expected, rel=1e-9)
    # chunking changes nothing
    assert S.snd(z, temperature=temperature, chunk_size=7) == pytest.approx(expected, rel=1e-9)


def test_snd_higher_for_clustered_than_scattered():
    rng = np.random.default_rng(3)
    c, n = 10, 200
    base = np.eye(c)[rng.integers(0, c, n)] * 6.0
    tight = S.snd(base + rng.normal(0, 0.3, (n, c)))
    scattered = S.snd(base + rng.normal(0, 3.0, (n, c)))
    assert tight > scattered + 0.2
    # tight one-hot clusters: each point spreads its neighbourhood over its own cluster
    assert tight == pytest.approx(math.log(n / c), abs=0.1)


def test_snd_degenerate_constant_predictions_hit_the_maximum():
    # Documented limitation: a model predicting one vector for every input reaches log(N-1).
    z = np.tile([[2.0, 0.0, -1.0]], (30, 1))
    assert S.snd(z) == pytest.approx(math.log(29), rel=1e-9)


def test_im_matches_reference_and_extremes():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, size=(30, 5))
    assert S.information_maximization_score(z) == pytest.approx(ref_im(z.tolist()), rel=1e-9)
    c = 4
    confident_balanced = np.tile(np.eye(c) * 40.0, (5, 1))
    confident_collapsed = np.tile([[40.0, 0, 0, 0]], (20, 1))
    uncertain = np.zeros((20, c))
    assert S.information_maximization_score(confident_balanced) == pytest.approx(math.log(c), abs=1e-9)
    assert S.information_maximization_score(confident_collapsed) == pytest.approx(0.0, abs=1e-9)
    assert S.information_maximization_score(uncertain) == pytest.approx(0.0, abs=1e-9)
    assert S.information_maximization_score(z) < math.log(c + 1)


def test_dev_control_variate_matches_reference():
    rng = np.random.default_rng(5)
    w = rng.lognormal(0, 0.7, 64)
    loss = rng.exponential(1.0, 64) + 0.3 * w
    assert S.dev_risk_from_weights(w, loss) == pytest.approx(ref_dev_from_weights(w.tolist(), loss.tolist()), rel=1e-10)
    # constant weights: no variance, eta = 0, risk = mean(w * l)
    assert S.dev_risk_from_weights(np.full(10, 2.0), np.arange(10.0)) == pytest.approx(2.0 * 4.5)


def test_dev_same_domain_is_the_mean_validation_loss():
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(400, 8))
    val = rng.normal(size=(200, 8))
    loss = rng.exponential(1.0, 200)
    w = S.dev_importance_weights(feats, feats, val)
    np.testing.assert_allclose(w, 1.0, atol=1e-6)
    assert S.dev_risk(feats, feats, val, loss) == pytest.approx(loss.mean(), rel=1e-3)
    # two independent samples of one distribution: weights near 1, risk near the mean loss
    other = rng.normal(size=(400, 8))
    assert S.dev_risk(feats, other, val, loss) == pytest.approx(loss.mean(), rel=0.1)


def test_dev_recovers_target_risk_under_covariate_shift():
    # source N(0,1), target N(1,1): true ratio p_t/p_s = exp(x - 1/2). With loss l(x) = x^2 the
    # source risk is 1 and the target risk E_t[x^2] = 2.
    rng = np.random.default_rng(7)
    xs, xt, xv = rng.normal(0, 1, 4000), rng.normal(1, 1, 4000), rng.normal(0, 1, 4000)
    w = S.dev_importance_weights(xs, xt, xv)
    true_w = np.exp(xv - 0.5)
    assert np.corrcoef(np.log(w), np.log(true_w))[0, 1] > 0.999
    assert np.median(w / true_w) == pytest.approx(1.0, abs=0.1)
    risk = S.dev_risk(xs, xt, xv, xv**2)
    assert risk == pytest.approx(2.0, abs=0.25)
    assert abs(risk - 2.0) < abs(np.mean(xv**2) - 2.0)


def test_bad_inputs_raise_jtl_errors():
    with pytest.raises(DataError):
        S.snd(np.zeros((1, 3)))
    with pytest.raises(DataError):
        S.source_val_accuracy(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(DataError):
        S.information_maximization_score(np.array([[np.nan, 0.0]]))
    with pytest.raises(ConfigError):
        S.snd(np.zeros((3, 2)), temperature=0)


# ------------------------------------------------------------------ select


def test_methods_table_directions():
    assert set(S.METHODS) == {"source_val", "dev", "snd", "im", "oracle"}
    assert {k: m.higher_is_better for k, m in S.METHODS.items()} == {
        "source_val": True, "dev": False, "snd": True, "im": True, "oracle": True
    }
    assert [k for k, m in S.METHODS.items() if m.uses_target_labels] == ["oracle"]
    assert "oracle" in S.METHODS["oracle"].title


@pytest.mark.parametrize("method", list(S.METHODS))
def test_select_respects_direction_with_precomputed_scores(method):
    cands = [{"id": f"run{i}", "scores": {method: s}} for i, s in enumerate([0.3, 0.9, 0.1, float("nan")])]
    res = S.select(cands, method)
    want = "run1" if S.METHODS[method].higher_is_better else "run2"
    assert res.best_id == want
    assert res.higher_is_better == S.METHODS[method].higher_is_better
    assert [i for i, _ in res.scores] == ["run0", "run1", "run2", "run3"]


def test_oracle_is_marked_everywhere():
    cands = [{"id": "a", "scores": {"oracle": 0.5}}, {"id": "b", "scores": {"oracle": 0.7}}]
    res = S.select(cands, "oracle")
    assert res.uses_target_labels and res.label.startswith("oracle")
    assert "oracle" in str(res) and "ORACLE" in res.report() and "target labels" in res.report()
    d = res.to_dict()
    assert d["oracle"] is True and d["uses_target_labels"] is True and "oracle" in d["label"]
    other = S.select([{"id": "a", "scores": {"im": 1.0}}], "im")
    assert not other.uses_target_labels and "oracle" not in other.report().lower()
    assert other.to_dict()["oracle"] is False


def test_select_from_arrays():
    rng = np.random.default_rng(8)
    c, n = 4, 80
    ys, yt = rng.integers(0, c, n), rng.integers(0, c, n)
    fs, fv, ft = rng.normal(size=(n, 6)), rng.normal(size=(n, 6)), rng.normal(size=(n, 6)) + 0.5

    def cand(cid, quality):
        # quality scales how strongly the logits point at the true class
        zs = np.eye(c)[ys] * quality + rng.normal(0, 1, (n, c))
        zt = np.eye(c)[yt] * quality + rng.normal(0, 1, (n, c))
        return {
            "id": cid,
            "source_val_logits": zs, "source_val_labels": ys,
            "source_train_features": fs, "source_val_features": fv,
            "target_features": ft, "target_logits": zt, "target_labels": yt,
        }

    cands = [cand("weak", 0.5), cand("strong", 6.0), cand("mid", 2.0)]
    # DEV takes explicit per-sample losses, or the cross-entropy of the validation logits
    cands[2]["source_val_losses"] = S.per_sample_cross_entropy(cands[2]["source_val_logits"], ys)
    for method in S.METHODS:
        res = S.select(cands, method)
        assert res.best_id == "strong", (method, res.scores)
    # options reach the score function
    res = S.select(cands, "snd", temperature=0.1)
    assert res.scores[0][1] == pytest.approx(S.snd(cands[0]["target_logits"], temperature=0.1))
    # direct score equals the function
    assert S.score_candidate(cands[0], "im") == S.information_maximization_score(cands[0]["target_logits"])


def test_select_errors():
    with pytest.raises(ConfigError, match="unknown selection method"):
        S.select([{"id": 1, "scores": {"im": 1.0}}], "accuracy")
    with pytest.raises(ConfigError, match="target_logits"):
        S.select([{"id": 1}], "snd")
    with pytest.raises(ConfigError):
        S.select([], "im")
    with pytest.raises(DataError, match="NaN"):
        S.select([{"id": 1, "scores": {"im": float("nan")}}], "im")


def test_select_ties_go_to_first():
    cands = [{"id": i, "scores": {"dev": 1.0}} for i in range(3)]
    assert S.select(cands, "dev").best_index == 0
