"""Sweeps: many runs from one config file, trained vectorized where they differ only in numbers.

See :mod:`jtl.sweep.spec` (what to run) and :mod:`jtl.sweep.runner` (running it).
"""

from jtl.sweep.spec import choice, grid, log_uniform, member_name, random_search, uniform

__all__ = ["choice", "grid", "log_uniform", "member_name", "random_search", "uniform"]
