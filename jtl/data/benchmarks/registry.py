"""All benchmarks by name, and the 9-class views (``cifar9``, ``stl9``) read from others."""

from __future__ import annotations

from jtl.data.benchmarks.base import Benchmark
from jtl.data.benchmarks.cifar_stl import CIFAR10, NINE, STL10, VIEWS
from jtl.data.benchmarks.digits import MNIST, MNISTM, SVHN, USPS
from jtl.data.benchmarks.domainnet import DOMAINNET
from jtl.data.benchmarks.office import OFFICE31, OFFICE_HOME
from jtl.data.benchmarks.pacs import PACS
from jtl.data.benchmarks.visda import VISDA2017

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (OFFICE31, OFFICE_HOME, VISDA2017, DOMAINNET, PACS, MNIST, USPS, SVHN, MNISTM, CIFAR10, STL10)
}
NAMES = (*BENCHMARKS, *VIEWS)


def stored(name: str) -> Benchmark:
    """The benchmark whose files ``name`` reads (a 9-class view reads its 10-class dataset)."""
    return BENCHMARKS[VIEWS.get(name, name)]


def class_names(name: str) -> tuple[str, ...]:
    return NINE if name in VIEWS else BENCHMARKS[name].classes


def parse_domain(name: str, text: str, full: str) -> str:
    """The canonical domain of ``name:text`` (``""`` for a dataset without domains)."""
    return stored(name).domain(text, full)


def describe() -> str:
    """``office31:A|D|W, ..., mnist, ...`` for error messages."""
    out = []
    for name in NAMES:
        domains = [d for d in stored(name).domains if d]
        out.append(f"{name}:{'|'.join(domains)}" if domains and name not in VIEWS else name)
    return ", ".join(out)
