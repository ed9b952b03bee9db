"""Runs written before the transfer layout (:mod:`jtl.models.transfer`), read in it.

Until this layout, a fine-tuning run stored the family's own network (the ResNet's
``fc`` a top-level module) and a linear probe only its classifier's ``kernel``/``bias``;
adaptation runs already used ``backbone/``, ``bottleneck/``, ``head/``. Such runs are
converted when read, so they evaluate, predict and seed new runs (``model.init``) as
before; their optimizer state has the old structure, so they are not resumed.
"""

from __future__ import annotations

from jtl.models.transfer import is_transfer_layout, to_transfer_layout

LAYOUT = "transfer"  # run.json's "layout" of runs written in this layout


def current_layout(variables: dict, arch: str) -> dict:
    """``{"params", "batch_stats", ...}`` of a run of ``arch`` (any era) -> the transfer layout."""
    params = variables["params"]
    if is_transfer_layout(params) or set(params) == {"head"}:
        return variables
    if set(params) == {"kernel", "bias"}:  # a linear probe's classifier
        return {**variables, "params": {"head": params}, "batch_stats": {}}
    return {**variables, **to_transfer_layout(variables, arch)}
