"""Proxy A-distance between two feature sets."""

from __future__ import annotations

import numpy as np

from jtl.errors import ConfigError, DataError


def _features(x, name):
    f = np.asarray(x, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"{name} must be a (N, D) array with N >= 2, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise DataError(f"{name} contains NaN or inf")
    return f.reshape(f.shape[0], -1)


def proxy_a_distance(
    source_features,
    target_features,
    *,
    classifier: str = "logistic",
    C: float = 1.0,
    test_fraction: float = 0.5,
    balance: bool = True,
    max_points: int | None = 5000,
    clip: bool = True,
    seed: int = 0,
    return_error: bool = False,
):
    """Proxy A-distance ``d_A = 2 (1 - 2 eps)`` between source and target features.

    A linear domain classifier (``classifier="logistic"``: logistic regression, or ``"svm"``:
    linear SVM, both scikit-learn with regularisation ``C``, on standardised features) learns
    to tell source (0) from target (1) on a stratified random ``1 - test_fraction`` of the
    points; ``eps`` is its error on the held-out ``test_fraction``.

    * ``d_A ~ 2``: the domains are linearly separable (``eps = 0``).
    * ``d_A ~ 0``: indistinguishable (``eps = 1/2``). A classifier can do worse than chance
      on held-out data, making ``2 (1 - 2 eps)`` slightly negative; ``clip=True`` (default)
      clips ``d_A`` to ``[0, 2]``, ``clip=False`` returns the raw value.

    ``balance=True`` subsamples the larger domain to the smaller's size so that chance level
    is ``eps = 1/2`` (with unequal sizes the majority-class rule alone would look like a
    divergence); ``max_points`` caps each domain (random subsample) to bound the cost.
    ``return_error=True`` returns ``(d_A, eps)``.

    Ben-David et al., "Analysis of Representations for Domain Adaptation", NeurIPS 2007;
    Ben-David et al., "A theory of learning from different domains", Machine Learning 2010;
    used as in Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if classifier not in ("logistic", "svm"):
        raise ConfigError(f"proxy_a_distance classifier must be 'logistic' or 'svm', got {classifier!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    fs = _features(source_features, "source_features")
    ft = _features(target_features, "target_features")
    if fs.shape[1] != ft.shape[1]:
        raise DataError(f"source features have width {fs.shape[1]}, target features {ft.shape[1]}")
    rng = np.random.default_rng(seed)
    n_s, n_t = len(fs), len(ft)
    if balance:
        n_s = n_t = min(n_s, n_t)
    if max_points is not None:
        n_s, n_t = min(n_s, max_points), min(n_t, max_points)
    fs = fs[rng.permutation(len(fs))[:n_s]]
    ft = ft[rng.permutation(len(ft))[:n_t]]
    x = np.concatenate([fs, ft])
    d = np.concatenate([np.zeros(n_s, np.int64), np.ones(n_t, np.int64)])
    x_tr, x_te, d_tr, d_te = train_test_split(x, d, test_size=test_fraction, stratify=d, random_state=seed)
    scaler = StandardScaler().fit(x_tr)
    if classifier == "logistic":
        clf = LogisticRegression(C=C, max_iter=2000)
    else:
        clf = LinearSVC(C=C, max_iter=10000)
    clf.fit(scaler.transform(x_tr), d_tr)
    eps = float(np.mean(clf.predict(scaler.transform(x_te)) != d_te))
    dist = 2.0 * (1.0 - 2.0 * eps)
    if clip:
        dist = min(max(dist, 0.0), 2.0)
    return (dist, eps) if return_error else dist
