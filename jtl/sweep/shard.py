"""``--shard I/N``: split a sweep's groups among N invocations (hosts, Kubernetes jobs, TPU VMs, ssh loops).

Every invocation plans the same groups from the same sweep (over all its runs, finished or
not, see :func:`jtl.sweep.runner.plan`), so the split needs no coordination: group ``g`` of
``m`` runs goes to the shard with the fewest runs so far, larger groups first (Graham's
longest-processing-time rule, "Bounds on multiprocessing timing anomalies", 1969), ties to the
lower shard and the earlier group. Shards are disjoint and together cover every group;
a run's workdir lock (:mod:`jtl.train.lock`) still keeps two processes from training one run
if two invocations were given the same shard by mistake. ``jtl collect SWEEP_DIR`` merges them.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

from jtl.errors import ConfigError

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``; anything but ``I/N`` with ``0 <= I < N`` is a one-line error."""
    i, sep, n = text.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        i = n = -1
    if not sep or not 0 <= i < n:
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got {text!r}")
    return i, n


def assign(sizes: Sequence[int], n: int) -> list[int]:
    """The shard of each group, given the groups' sizes (runs): largest first, to the least loaded shard."""
    load = [0] * n
    out = [0] * len(sizes)
    for g in sorted(range(len(sizes)), key=lambda g: (-sizes[g], g)):
        s = min(range(n), key=lambda k: (load[k], k))
        out[g] = s
        load[s] += sizes[g]
    return out


def share(groups: Sequence[Sequence[T]], i: int, n: int) -> list[Sequence[T]]:
    """The groups of shard ``i`` of ``n`` (in their planned order)."""
    shards = assign([len(g) for g in groups], n)
    return [g for g, s in zip(groups, shards) if s == i]
