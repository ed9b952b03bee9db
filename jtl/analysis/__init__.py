"""Analysis of learnt representations: domain divergence, embeddings, per-class errors.

* :func:`proxy_a_distance` -- proxy A-distance between source and target features.
* :func:`tsne_plot` -- t-SNE scatter of source vs target features, written as a PNG.
* :func:`per_class_accuracy`, :func:`per_class_table` -- per-class target accuracy (markdown).
"""

from jtl.analysis.a_distance import proxy_a_distance
from jtl.analysis.per_class import per_class_accuracy, per_class_table
from jtl.analysis.tsne import tsne_plot

__all__ = ["per_class_accuracy", "per_class_table", "proxy_a_distance", "tsne_plot"]
