"""Names -> architectures. ``create_model(name, num_classes, **options)`` builds any of them."""

from __future__ import annotations

import dataclasses
from typing import Any

from jtl.errors import ConfigError
from jtl.models.resnet import ResNet


@dataclasses.dataclass(frozen=True)
class Arch:
    """Hyperparameters that define one architecture (everything but the head size)."""

    block: str
    stage_sizes: tuple[int, ...]
    stage_widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "imagenet"
    stem_width: int = 64
    width_per_group: int = 64
    doc: str = ""


def _cifar(n: int) -> Arch:
    return Arch("basic", (n, n, n), (16, 32, 64), "cifar", 16, doc=f"CIFAR ResNet-{6 * n + 2} (He et al. 2016, sec. 4.2)")


ARCHS: dict[str, Arch] = {
    # torchvision ImageNet ResNets.
    "resnet18": Arch("basic", (2, 2, 2, 2), doc="torchvision resnet18"),
    "resnet34": Arch("basic", (3, 4, 6, 3), doc="torchvision resnet34"),
    "resnet50": Arch("bottleneck", (3, 4, 6, 3), doc="torchvision resnet50"),
    "resnet101": Arch("bottleneck", (3, 4, 23, 3), doc="torchvision resnet101"),
    "resnet152": Arch("bottleneck", (3, 8, 36, 3), doc="torchvision resnet152"),
    "wide_resnet50_2": Arch("bottleneck", (3, 4, 6, 3), width_per_group=128, doc="torchvision wide_resnet50_2"),
    # Small ResNets for 28-32 px images.
    "resnet18_cifar": Arch("basic", (2, 2, 2, 2), stem="cifar", doc="ResNet-18 with a 3x3/1 stem and no max pool"),
    "cifar_resnet8": _cifar(1),
    "cifar_resnet14": _cifar(2),
    "cifar_resnet20": _cifar(3),
    "cifar_resnet32": _cifar(5),
    "cifar_resnet56": _cifar(9),
}

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2")


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}") from None


def create_model(name: str, num_classes: int | None = 1000, **options: Any) -> ResNet:
    """Build architecture ``name`` with a ``num_classes``-way head (``None``: no head).

    ``options`` go to :class:`jtl.models.resnet.ResNet` (``dtype``, ``frozen_bn``,
    ``zero_init_residual``). Example::

        model = create_model("resnet50", num_classes=10)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    """
    arch = get_arch(name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise ConfigError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    fields = {f.name for f in dataclasses.fields(ResNet)}
    unknown = set(options) - fields
    if unknown:
        raise ConfigError(f"unknown model option(s) {sorted(unknown)} for {name!r}")
    spec = {k: v for k, v in dataclasses.asdict(arch).items() if k != "doc"}
    return ResNet(num_classes=num_classes or None, **spec, **options)
