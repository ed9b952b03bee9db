"""Transferability scores: how well a pretrained model suits a labelled target task, before training.

Each score reads a model's outputs on the target task's labelled images once (no training)
and is larger for a model expected to fine-tune better:

* :func:`logme` -- log marginal evidence of a Bayesian linear model on the features (You et al. 2021);
* :func:`leep` -- log expected empirical prediction through the source classifier (Nguyen et al. 2020);
* :func:`nce` -- negative conditional entropy of target labels given source labels (Tran et al. 2019);
* :func:`h_score` -- between-class over total feature covariance (Bao et al. 2019);
* :func:`transrate` -- coding-rate reduction of the features by the labels (Huang et al. 2022).

All are pure functions of numpy arrays (float64 inside); bad shapes or values raise
:class:`jtl.errors.DataError` with one line. :data:`SCORES` maps names to what each needs.
"""

from __future__ import annotations

import numpy as np

from jtl.errors import ConfigError, DataError


def _labels(labels, n: int | None = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (n is not None and y.shape[0] != n):
        raise DataError(f"labels must be {n if n is not None else 'N'} integers (N,), got shape {y.shape} "
                        f"and dtype {y.dtype}")
    if y.size == 0 or y.min() < 0:
        raise DataError("labels must be non-empty and >= 0")
    return y.astype(np.int64)


def _matrix(x, name: str) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise DataError(f"{name} must be an (N, D) array with N >= 2, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise DataError(f"{name} contains NaN or inf")
    return f


def _probabilities(probs) -> np.ndarray:
    p = _matrix(probs, "source_probs")
    if p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise DataError("source_probs must be probabilities (rows >= 0 summing to 1); pass softmax(logits)")
    return p


# --------------------------------------------------------------------------------------- LogME


_BOUNDS = (1e-12, 1e12)  # alpha and beta stay in this range (see logme_evidence)


def logme_evidence(features, targets, *, max_iter: int = 1000, tol: float = 1e-10):
    """Evidence maximisation for one target column ``y`` (N,) on ``features`` F (N, D).

    Model: ``y = F m + noise``, prior ``m ~ N(0, alpha^-1 I)``, noise ``N(0, beta^-1)``. With
    ``A = alpha I + beta F^T F`` and posterior mean ``m = beta A^-1 F^T y``, the log evidence is

        L = n/2 log beta + D/2 log alpha - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log|A|

    maximised over (alpha, beta) by MacKay's fixed point, iterated from alpha = beta = 1:
    ``gamma = sum_i beta s_i / (alpha + beta s_i)`` (s_i: eigenvalues of F^T F),
    ``alpha = gamma / m^T m``, ``beta = (n - gamma) / ||F m - y||^2``. Computed through one SVD
    of F (You et al. 2021, Algorithm 1). Returns ``(L / n, alpha, beta)`` per column of ``targets``
    (N, K) as three (K,) arrays.

    With fewer examples than features the labels can often be fitted exactly and the evidence
    grows towards its supremum at beta -> infinity (noise-free interpolation): alpha and beta
    are kept in [1e-12, 1e12], so such a column ends at beta = 1e12, within rounding of the limit.
    """
    f = _matrix(features, "features")
    y = np.asarray(targets, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != f.shape[0]:
        raise DataError(f"targets must have {f.shape[0]} rows, got shape {np.shape(targets)}")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sig = s**2  # nonzero part of F^T F's spectrum; the other D - r eigenvalues are 0
    evidences, alphas, betas = [], [], []
    for k in range(y.shape[1]):
        z = u.T @ y[:, k]  # y in the left singular basis
        outside = max(float(y[:, k] @ y[:, k] - z @ z), 0.0)  # part of ||y||^2 outside F's column space
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            denom = alpha + beta * sig
            gamma = float(np.sum(beta * sig / denom))
            mm = float(np.sum((beta * s * z / denom) ** 2))  # m^T m
            res = float(np.sum((alpha * z / denom) ** 2)) + outside  # ||F m - y||^2
            new_alpha = min(max(gamma / max(mm, 1e-300), _BOUNDS[0]), _BOUNDS[1])
            new_beta = min(max((n - gamma) / max(res, 1e-300), _BOUNDS[0]), _BOUNDS[1])
            done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        denom = alpha + beta * sig
        mm = float(np.sum((beta * s * z / denom) ** 2))
        res = float(np.sum((alpha * z / denom) ** 2)) + outside
        log_det_a = float(np.sum(np.log(denom))) + (d - sig.size) * np.log(alpha)
        evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                    - beta / 2 * res - alpha / 2 * mm - log_det_a / 2)
        evidences.append(evidence / n)
        alphas.append(alpha)
        betas.append(beta)
    return np.array(evidences), np.array(alphas), np.array(betas)


def logme(features, labels) -> float:
    """LogME: the mean over classes k of the maximised log evidence per example of a Bayesian
    linear regression from the features to the one-hot column ``1[y = k]``
    (:func:`logme_evidence`). Higher is better; invariant to the order of the examples.

    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning", ICML 2021.
    """
    f = _matrix(features, "features")
    y = _labels(labels, f.shape[0])
    onehot = (y[:, None] == np.arange(y.max() + 1)[None, :]).astype(np.float64)
    evidence, _, _ = logme_evidence(f, onehot[:, onehot.any(axis=0)])
    return float(np.mean(evidence))


# ------------------------------------------------------------------------------ LEEP and NCE


def leep(source_probs, labels) -> float:
    """LEEP: with theta_i the source model's class probabilities of example i (N, Z),
    ``P(y, z) = 1/n sum_{i: y_i = y} theta_i(z)``, ``P(y | z) = P(y, z) / sum_y' P(y', z)`` and

        LEEP = 1/n sum_i log sum_z P(y_i | z) theta_i(z)

    the log-likelihood of the "expected empirical predictor". At most 0; higher is better.

    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of
    Learned Representations", ICML 2020.
    """
    theta = _probabilities(source_probs)
    y = _labels(labels, theta.shape[0])
    joint = np.zeros((y.max() + 1, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= theta.shape[0]
    cond = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)  # P(y | z)
    eep = np.sum(theta * cond[y], axis=1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def nce(source_labels, labels) -> float:
    """NCE: the negative conditional entropy of the target labels given the source labels,

        NCE = -H(Y | Z) = sum_{y, z} P(y, z) log (P(y, z) / P(z))

    with the empirical joint distribution of the N pairs (z_i, y_i). Without the target images'
    true source labels (the usual case), z_i is the source model's predicted class. At most 0.

    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks",
    ICCV 2019.
    """
    y = _labels(labels)
    z = _labels(source_labels, y.shape[0])
    joint = np.zeros((z.max() + 1, y.max() + 1))
    np.add.at(joint, (z, y), 1.0)
    joint /= y.shape[0]
    pz = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.maximum(pz, 1e-300))[nz])))


# ------------------------------------------------------------------------ H-score, TransRate


def h_score(features, labels, *, rcond: float = 1e-10) -> float:
    """H-score: ``H(f) = tr(cov(f)^-1 cov(E[f | y]))``, the covariance of the class-conditional
    means (each example's feature replaced by its class mean) against the total covariance
    (pseudo-inverse, singular values below ``rcond`` times the largest dropped). At most the
    number of classes minus one; higher is better.

    Bao, Li, Huang, Zheng, Wornell, Zhang, "An Information-Theoretic Approach to Transferability
    in Task Transfer Learning", ICIP 2019.
    """
    f = _matrix(features, "features")
    y = _labels(labels, f.shape[0])
    f = f - f.mean(axis=0)
    cov_f = f.T @ f / f.shape[0]
    sums = np.zeros((y.max() + 1, f.shape[1]))
    np.add.at(sums, y, f)
    means = sums / np.maximum(np.bincount(y), 1)[:, None]
    g = means[y]  # E[f | y_i] per example
    cov_g = g.T @ g / f.shape[0]
    return float(np.trace(np.linalg.pinv(cov_f, rcond=rcond, hermitian=True) @ cov_g))


def coding_rate(z, eps: float) -> float:
    """``R(Z, eps) = 1/2 log det(I_d + d / (n eps^2) Z^T Z)`` of n features Z (n, d): the bits to
    code them up to distortion eps (Ma et al. 2007; Yu et al. 2020)."""
    n, d = z.shape
    _, logdet = np.linalg.slogdet(np.eye(d) + d / (n * eps**2) * (z.T @ z))
    return 0.5 * float(logdet)


def transrate(features, labels, *, eps: float = 0.1) -> float:
    """TransRate: the coding-rate reduction of the centred features Z by the labels,

        TrR = R(Z, eps) - sum_y (n_y / n) R(Z_y, eps)

    with :func:`coding_rate` R and Z_y the features of class y: large when the features are
    spread overall but compact within each class. Depends on the scale of the features
    relative to ``eps``; compare models on features of the same kind.

    Huang, Huang, Huang, Tan, Wei, "Frustratingly Easy Transferability Estimation", ICML 2022.
    """
    if not eps > 0:
        raise ConfigError(f"transrate eps must be > 0, got {eps}")
    f = _matrix(features, "features")
    y = _labels(labels, f.shape[0])
    z = f - f.mean(axis=0)
    within = sum((y == c).sum() / y.shape[0] * coding_rate(z[y == c], eps) for c in np.unique(y))
    return coding_rate(z, eps) - float(within)


# what each score reads: "features" (penultimate activations) or the source classifier's outputs
SCORES = {
    "logme": ("features", logme),
    "leep": ("probs", leep),
    "nce": ("predicted", nce),
    "h_score": ("features", h_score),
    "transrate": ("features", transrate),
}


def score(name: str, *, features, logits, labels) -> float:
    """Score ``name`` from a model's ``features`` (N, D) and source ``logits`` (N, Z) on the
    target ``labels`` (N,); LEEP reads softmax(logits), NCE argmax(logits)."""
    if name not in SCORES:
        raise ConfigError(f"unknown transferability score {name!r}; choose from {', '.join(SCORES)}")
    needs, fn = SCORES[name]
    if needs == "features":
        return fn(features, labels)
    z = _matrix(logits, "logits")
    if needs == "predicted":
        return fn(np.argmax(z, axis=1), labels)
    z = z - z.max(axis=1, keepdims=True)
    return fn(np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), labels)
