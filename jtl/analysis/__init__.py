"""Analysis of learnt representations: domain divergence, embeddings, per-class errors.

* :func:`proxy_a_distance` -- proxy A-distance between source and target features.
* :func:`tsne_plot` -- t-SNE scatter of source vs target features, written as a PNG.
* :func:`per_class_accuracy`, :func:`per_class_table` -- per-class target accuracy (markdown).
* :mod:`~jtl.analysis.transferability` -- LogME, LEEP, NCE, H-score, TransRate: how well a
  pretrained model suits a labelled task before training; ``jtl rank`` (:mod:`~jtl.analysis.rank`).
"""

from jtl.analysis.a_distance import proxy_a_distance
from jtl.analysis.per_class import per_class_accuracy, per_class_table
from jtl.analysis.transferability import h_score, leep, logme, nce, transrate
from jtl.analysis.tsne import tsne_plot

__all__ = ["h_score", "leep", "logme", "nce", "per_class_accuracy", "per_class_table", "proxy_a_distance",
           "transrate", "tsne_plot"]
