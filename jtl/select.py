"""Unsupervised model selection for domain adaptation.

A UDA sweep produces many candidate models (hyper-parameters, loss weights, epochs) and,
by the problem's definition, no target labels to choose among them. This module scores
each candidate from arrays a run already has and picks the best one:

=============  ==========================================  ===========  ==================
method         score                                        better       needs
=============  ==========================================  ===========  ==================
``source_val`` source validation accuracy                   higher       source val logits, labels
``dev``        Deep Embedded Validation risk                lower        source train/val features,
                                                                         val losses, target features
``snd``        Soft Neighbourhood Density                   higher       target logits
``im``         information maximization H(p_bar)-mean H(p)  higher       target logits
``oracle``     target accuracy -- USES TARGET LABELS        higher       target logits, labels
=============  ==========================================  ===========  ==================

The directions live in one table, :data:`METHODS`. ``oracle`` is an upper bound for
reporting, never a valid unsupervised selection: its results carry
``uses_target_labels=True`` and every label and report says ``oracle``.

All scores are plain numpy (float64) on host arrays (jax arrays are accepted); DEV fits a
scikit-learn logistic regression.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jtl.errors import ConfigError, DataError
from jtl.select_criteria import (  # the scores; re-exported here
    dev_importance_weights,
    dev_risk,
    dev_risk_from_weights,
    information_maximization_score,
    oracle_target_accuracy,
    per_sample_cross_entropy,
    snd,
    source_val_accuracy,
)

__all__ = [
    "METHODS",
    "Method",
    "SelectionResult",
    "dev_importance_weights",
    "dev_risk",
    "dev_risk_from_weights",
    "information_maximization_score",
    "oracle_target_accuracy",
    "per_sample_cross_entropy",
    "score_candidate",
    "select",
    "snd",
    "source_val_accuracy",
]


# --------------------------------------------------------------------------- selection


def _need(candidate: Mapping[str, Any], key: str, method: str) -> Any:
    if key not in candidate:
        raise ConfigError(
            f"candidate {candidate.get('id')!r} has no {key!r} (needed by {method!r}) "
            f"and no precomputed scores[{method!r}]"
        )
    return candidate[key]


def _score_source_val(c, **kw):
    return source_val_accuracy(_need(c, "source_val_logits", "source_val"), _need(c, "source_val_labels", "source_val"))


def _score_dev(c, **kw):
    if "source_val_losses" in c:
        losses = c["source_val_losses"]
    else:
        losses = per_sample_cross_entropy(
            _need(c, "source_val_logits", "dev"), _need(c, "source_val_labels", "dev")
        )
    return dev_risk(
        _need(c, "source_train_features", "dev"),
        _need(c, "target_features", "dev"),
        _need(c, "source_val_features", "dev"),
        losses,
        **kw,
    )


def _score_snd(c, **kw):
    return snd(_need(c, "target_logits", "snd"), **kw)


def _score_im(c, **kw):
    return information_maximization_score(_need(c, "target_logits", "im"))


def _score_oracle(c, **kw):
    return oracle_target_accuracy(_need(c, "target_logits", "oracle"), _need(c, "target_labels", "oracle"))


@dataclasses.dataclass(frozen=True)
class Method:
    """One selection criterion: its title, direction, whether it peeks at target labels."""

    title: str
    higher_is_better: bool
    score: Callable[..., float]
    uses_target_labels: bool = False

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


#: The one table of selection methods and their directions.
METHODS: dict[str, Method] = {
    "source_val": Method("source validation accuracy", True, _score_source_val),
    "dev": Method("DEV risk (You et al. 2019)", False, _score_dev),
    "snd": Method("SND (Saito et al. 2021)", True, _score_snd),
    "im": Method("information maximization", True, _score_im),
    "oracle": Method("oracle target accuracy (uses target labels)", True, _score_oracle, uses_target_labels=True),
}


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown selection method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def score_candidate(candidate: Mapping[str, Any], method: str, **options) -> float:
    """Score of one candidate: ``candidate["scores"][method]`` if precomputed, else computed
    from the candidate's arrays with ``METHODS[method].score(candidate, **options)``."""
    m = _method(method)
    pre = candidate.get("scores") or {}
    if method in pre:
        return float(pre[method])
    return float(m.score(candidate, **options))


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """The outcome of :func:`select`. ``scores`` keeps the candidates' order."""

    method: str
    best_id: Any
    best_index: int
    best_score: float
    scores: tuple[tuple[Any, float], ...]
    higher_is_better: bool
    uses_target_labels: bool

    @property
    def label(self) -> str:
        """Short name for tables; ``"oracle (uses target labels)"`` for the oracle."""
        return "oracle (uses target labels)" if self.uses_target_labels else self.method

    def to_dict(self) -> dict:
        """JSON-ready summary (``summary.json``); the oracle keeps ``"oracle": true``."""
        return {
            "method": self.method,
            "label": self.label,
            "oracle": self.uses_target_labels,
            "uses_target_labels": self.uses_target_labels,
            "higher_is_better": self.higher_is_better,
            "best_id": self.best_id,
            "best_score": self.best_score,
            "scores": {str(i): s for i, s in self.scores},
        }

    def report(self) -> str:
        """Markdown table of every candidate's score, the pick marked with ``*``."""
        m = METHODS[self.method]
        head = f"Model selection by {m.title} ({m.direction})"
        if self.uses_target_labels:
            head = f"ORACLE -- not an unsupervised selection. {head}"
        lines = [head, "", f"| candidate | {self.label} |", "|---|---|"]
        for i, (cid, s) in enumerate(self.scores):
            mark = " *" if i == self.best_index else ""
            lines.append(f"| {cid}{mark} | {s:.4f} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.label}: best {self.best_id!r} ({self.best_score:.4f}, {METHODS[self.method].direction})"


def select(candidates: Sequence[Mapping[str, Any]], method: str, **options) -> SelectionResult:
    """Pick the best of ``candidates`` by ``method`` (a key of :data:`METHODS`).

    Each candidate is a mapping with an ``"id"`` and either ``"scores": {method: value}``
    or the arrays the method needs:

    * ``source_val``: ``source_val_logits`` (N, C), ``source_val_labels`` (N,)
    * ``dev``: ``source_train_features``, ``target_features``, ``source_val_features`` and
      ``source_val_losses`` (N,) -- or ``source_val_logits`` + ``source_val_labels``, from
      which the per-sample cross-entropy is computed
    * ``snd``, ``im``: ``target_logits``
    * ``oracle``: ``target_logits``, ``target_labels`` (uses target labels!)

    ``options`` go to the score function (``snd``: ``temperature``; ``dev``: ``C``,
    ``max_iter``). A NaN score (a diverged run) never wins; ties go to the earliest
    candidate.
    """
    m = _method(method)
    if not candidates:
        raise ConfigError("select() needs at least one candidate")
    ids, scores = [], []
    for i, c in enumerate(candidates):
        if "id" not in c:
            raise ConfigError(f"candidate #{i} has no 'id'")
        ids.append(c["id"])
        scores.append(score_candidate(c, method, **options))
    vals = np.array(scores, dtype=np.float64)
    ok = ~np.isnan(vals)
    if not ok.any():
        raise DataError(f"every candidate's {method!r} score is NaN: nothing to select")
    sign = 1.0 if m.higher_is_better else -1.0
    key = np.where(ok, sign * vals, -math.inf)
    best = int(np.argmax(key))  # first maximum: ties go to the earliest candidate
    return SelectionResult(
        method=method,
        best_id=ids[best],
        best_index=best,
        best_score=float(vals[best]),
        scores=tuple(zip(ids, map(float, vals))),
        higher_is_better=m.higher_is_better,
        uses_target_labels=m.uses_target_labels,
    )
