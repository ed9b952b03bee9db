"""The scores of unsupervised model selection (:mod:`jtl.select` picks with them).

Each is plain numpy (float64) on host arrays (jax arrays are accepted): source
validation accuracy, the target-labelled oracle, information maximization, Soft
Neighbourhood Density (Saito et al. 2021) and Deep Embedded Validation (You et al. 2019;
its density ratio from a scikit-learn logistic regression).
"""

from __future__ import annotations

import numpy as np

from jtl.errors import ConfigError, DataError


# --------------------------------------------------------------------------- helpers


def _logits(x, name: str) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise DataError(f"{name} must be a (N, C) array with N >= 1 and C >= 2, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise DataError(f"{name} contains NaN or inf: check the run that produced it")
    return z


def _labels(y, n: int, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name} must be {n} integer class ids (shape ({n},)), got {y.dtype} {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{name} holds ids outside [0, {num_classes}): min {y.min()}, max {y.max()}")
    return y


def _features(x, name: str) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty (N, D) array, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise DataError(f"{name} contains NaN or inf")
    return f


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    """Row entropy -sum p log p with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -t.sum(axis=1)


def per_sample_cross_entropy(logits, labels) -> np.ndarray:
    """Per-sample cross-entropy ``l_i = -log softmax(z_i)[y_i]``, shape (N,); DEV's default loss."""
    z = _logits(logits, "logits")
    y = _labels(labels, z.shape[0], z.shape[1], "labels")
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return -logp[np.arange(z.shape[0]), y]


# --------------------------------------------------------------------------- scores


def source_val_accuracy(source_val_logits, source_val_labels) -> float:
    """Source validation accuracy ``1/N sum_i [argmax_c z_ic == y_i]`` (higher is better).

    The baseline every UDA paper reports: it assumes the source validation error tracks the
    target error, which fails exactly when adaptation trades source accuracy for alignment.
    See Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021, for
    training-domain validation.
    """
    z = _logits(source_val_logits, "source_val_logits")
    y = _labels(source_val_labels, z.shape[0], z.shape[1], "source_val_labels")
    return float(np.mean(np.argmax(z, axis=1) == y))


def oracle_target_accuracy(target_logits, target_labels) -> float:
    """ORACLE: target accuracy ``1/N sum_i [argmax_c z_ic == y_i]`` -- uses TARGET LABELS.

    An upper bound on what a selection method can achieve, for reports only: it is not an
    unsupervised criterion. Results of ``select(..., "oracle")`` carry
    ``uses_target_labels=True`` and are labelled ``oracle``.
    """
    z = _logits(target_logits, "target_logits")
    y = _labels(target_labels, z.shape[0], z.shape[1], "target_labels")
    return float(np.mean(np.argmax(z, axis=1) == y))


def information_maximization_score(target_logits) -> float:
    """Information maximization score ``IM = H(p_bar) - 1/N sum_i H(p_i)`` (higher is better).

    ``p_i = softmax(z_i)``, ``p_bar = 1/N sum_i p_i``, ``H(p) = -sum_c p_c log p_c``. It is the
    mutual information between inputs and predicted labels under the empirical distribution,
    in ``[0, log C]``; ``log C`` exactly for confident (one-hot) predictions that use every
    class equally. Note: it is the negative of the *loss* ``jtl.losses.information_maximization``.

    Objective: Liang et al., "Do We Really Need to Access the Source Data? Source Hypothesis
    Transfer for Unsupervised Domain Adaptation" (SHOT), ICML 2020 (after Krause et al.,
    "Discriminative Clustering by Regularized Information Maximization", NeurIPS 2010); used as
    a validation score e.g. in Musgrave et al., "Benchmarking Validation Methods for
    Unsupervised Domain Adaptation", 2022.
    """
    p = _softmax(_logits(target_logits, "target_logits"))
    p_bar = p.mean(axis=0, keepdims=True)
    return float(_entropy_rows(p_bar)[0] - _entropy_rows(p).mean())


def snd(target_logits, *, temperature: float = 0.05, chunk_size: int = 1024) -> float:
    """Soft Neighbourhood Density (higher is better).

    ``p_i = softmax(z_i)``, ``f_i = p_i / ||p_i||_2``; similarities ``S_ij = f_i . f_j``
    for ``j != i`` (the diagonal is excluded);
    ``P_ij = exp(S_ij / T) / sum_{k != i} exp(S_ik / T)``;
    ``SND = 1/N sum_i H(P_i) = -1/N sum_i sum_{j != i} P_ij log P_ij``, ``T = 0.05``.

    High when each prediction has many close neighbours, i.e. target predictions form dense
    clusters. In ``[0, log(N - 1)]``; the maximum is also reached by the degenerate model that
    predicts the same vector for every input, so read SND together with the class balance of
    its predictions (or IM). Needs ``N >= 2``. Memory is ``O(chunk_size * N)``, time ``O(N^2 C)``.

    Saito et al., "Tune it the Right Way: Unsupervised Validation of Domain Adaptation via
    Soft Neighborhood Density", ICCV 2021.
    """
    if temperature <= 0:
        raise ConfigError(f"snd temperature must be > 0, got {temperature}")
    p = _softmax(_logits(target_logits, "target_logits"))
    n = p.shape[0]
    if n < 2:
        raise DataError("snd needs at least 2 target samples")
    f = p / np.linalg.norm(p, axis=1, keepdims=True)
    total = 0.0
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n))
        s = (f[rows] @ f.T) / temperature
        s[np.arange(len(rows)), rows] = -np.inf  # drop self-similarity
        s = s - s.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        pr = np.exp(logp)
        ent = -np.where(pr > 0, pr * np.where(np.isfinite(logp), logp, 0.0), 0.0).sum(axis=1)
        total += ent.sum()
    return float(total / n)


def dev_importance_weights(
    source_train_features,
    target_features,
    source_val_features,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    clip: float = 1e-6,
) -> np.ndarray:
    """DEV density ratio ``w(x) = p_t(x) / p_s(x)`` on the source validation features.

    A logistic-regression domain classifier ``d(x) = P(target | x)`` is fitted on the
    standardised source-train (label 0) and target (label 1) features; by Bayes' rule

        ``w(x) = (n_s / n_t) * d(x) / (1 - d(x))``

    with ``n_s``, ``n_t`` the two training-set sizes (the class-prior correction).
    ``d`` is clipped to ``[clip, 1 - clip]`` so weights stay finite.
    You et al., "Towards Accurate Model Selection in Deep Unsupervised Domain Adaptation",
    ICML 2019, Sec. 4.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    fs = _features(source_train_features, "source_train_features")
    ft = _features(target_features, "target_features")
    fv = _features(source_val_features, "source_val_features")
    if not fs.shape[1] == ft.shape[1] == fv.shape[1]:
        raise DataError(
            f"DEV features disagree in width: source train {fs.shape[1]}, target {ft.shape[1]}, "
            f"source val {fv.shape[1]}"
        )
    x = np.concatenate([fs, ft])
    d = np.concatenate([np.zeros(len(fs)), np.ones(len(ft))])
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(x), d)
    prob_t = np.clip(clf.predict_proba(scaler.transform(fv))[:, 1], clip, 1.0 - clip)
    return (len(fs) / len(ft)) * prob_t / (1.0 - prob_t)


def dev_risk_from_weights(weights, source_val_losses) -> float:
    """DEV's control-variate estimate of the target risk from weights ``w_i`` and losses ``l_i``.

    ``L_i = w_i l_i`` (importance-weighted losses), ``eta = -Cov(L, w) / Var(w)`` (both with
    ``N - 1`` normalisation), ``risk = mean(L) + eta * mean(w) - eta``. Because ``E[w] = 1``
    under the source distribution, the ``eta (mean(w) - 1)`` term has zero mean and, with the
    optimal ``eta``, reduces the variance of the importance-weighted estimate. If the weights
    are constant (``Var(w) = 0``) ``eta = 0`` and the risk is ``mean(L)``.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    loss = np.asarray(source_val_losses, dtype=np.float64).reshape(-1)
    if w.shape != loss.shape or w.size < 2:
        raise DataError(f"DEV needs one weight per validation loss (>= 2): {w.size} weights, {loss.size} losses")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(loss))):
        raise DataError("DEV weights or validation losses contain NaN or inf")
    weighted = w * loss
    var_w = np.var(w, ddof=1)
    if var_w <= 1e-12 * max(1.0, float(np.mean(w)) ** 2):
        eta = 0.0
    else:
        cov = np.sum((weighted - weighted.mean()) * (w - w.mean())) / (w.size - 1)
        eta = -cov / var_w
    return float(weighted.mean() + eta * w.mean() - eta)


def dev_risk(
    source_train_features,
    target_features,
    source_val_features,
    source_val_losses,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Deep Embedded Validation risk (lower is better): an estimate of the target risk.

    1. Density ratio ``w(x) = p_t(x)/p_s(x)`` on the source validation features from a
       logistic-regression domain classifier trained on source-train vs target features
       (:func:`dev_importance_weights`).
    2. ``L_i = w(x_i) l_i`` with ``l_i`` the per-sample validation loss
       (e.g. :func:`per_sample_cross_entropy`).
    3. Control variate: ``eta = -Cov(L, w)/Var(w)``; ``risk = mean(L) + eta mean(w) - eta``
       (:func:`dev_risk_from_weights`).

    When target and source features share one distribution, ``w ~ 1`` and the risk is (close
    to) the plain mean validation loss. Features are each candidate's own embeddings (the
    input of its classifier head).

    You et al., "Towards Accurate Model Selection in Deep Unsupervised Domain Adaptation",
    ICML 2019.
    """
    w = dev_importance_weights(source_train_features, target_features, source_val_features, C=C, max_iter=max_iter)
    return dev_risk_from_weights(w, source_val_losses)
