"""Dataset names: ``BASE[:SHIFT[+SHIFT...][#SEED]] | folder:PATH | tfds:NAME``.

- ``BASE`` is ``fashion_mnist`` or ``digits``.
- ``SHIFT`` is ``kind[@param]`` (see :mod:`jtl.data.shifts`), applied left to right.
- ``#SEED`` (default 0) seeds the shift's randomness: it is part of the dataset's identity.
- ``folder:PATH``: an image folder ``PATH/<class>/*.jpg|png``.
- ``tfds:NAME``: any TFDS catalog name, with TFDS's ``name/config:version`` syntax.
- ``BENCHMARK[:DOMAIN]``: a published benchmark (:mod:`jtl.data.benchmarks`), e.g.
  ``office31:A``, ``domainnet:clipart``, ``mnist``, ``cifar9``.
"""

from __future__ import annotations

import dataclasses

from jtl.data import shifts as shifts_lib
from jtl.data.benchmarks import registry as benchmark_registry
from jtl.errors import DataError

BUILTIN = ("fashion_mnist", "digits")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed name: ``kind`` is ``builtin``, ``folder``, ``tfds`` or ``benchmark``; ``base`` the
    dataset; ``domain`` a benchmark's domain (``""`` where it has none)."""

    kind: str
    base: str
    shifts: tuple[shifts_lib.Shift, ...] = ()
    shift_seed: int = 0
    domain: str = ""

    @property
    def source(self) -> "Spec":
        """The unshifted dataset."""
        return Spec(self.kind, self.base, domain=self.domain)

    def __str__(self) -> str:
        if self.kind == "benchmark":
            return f"{self.base}:{self.domain}" if self.domain else self.base
        if self.kind != "builtin":
            return f"{self.kind}:{self.base}"
        if not self.shifts:
            return self.base
        return f"{self.base}:{'+'.join(map(str, self.shifts))}" + (f"#{self.shift_seed}" if self.shift_seed else "")


def parse(name: str) -> Spec:
    """``"fashion_mnist:mnistm+noise@2#1"`` -> ``Spec("builtin", "fashion_mnist", (mnistm, noise@2), 1)``."""
    if not isinstance(name, str) or not name:
        raise DataError(f"dataset name must be a non-empty string, got {name!r}")
    for kind in ("folder", "tfds"):
        if name.startswith(kind + ":"):
            rest = name[len(kind) + 1 :]
            if not rest:
                raise DataError(f"{name!r}: give a {'path' if kind == 'folder' else 'TFDS name'} after '{kind}:'")
            return Spec(kind, rest)
    base, _, rest = name.partition(":")
    if base in benchmark_registry.NAMES:
        return Spec("benchmark", base, domain=benchmark_registry.parse_domain(base, rest, name))
    if base not in BUILTIN:
        raise DataError(
            f"unknown dataset {base!r}; use one of {', '.join(BUILTIN)}, folder:PATH, tfds:NAME (e.g. tfds:cifar10) "
            f"or a benchmark ({benchmark_registry.describe()})"
        )
    if not rest:
        return Spec("builtin", base)
    text, _, seed = rest.partition("#")
    try:
        seed_value = int(seed) if seed else 0
    except ValueError:
        raise DataError(f"{name!r}: the shift seed after '#' must be an integer") from None
    if not 0 <= seed_value < 2**31:
        raise DataError(f"{name!r}: the shift seed must be in 0..2^31-1")
    return Spec("builtin", base, shifts_lib.parse_shifts(text, name), seed_value)
