"""ResNets with torchvision's exact architecture, NHWC (He et al., 2016).

Module and variable names mirror torchvision's state-dict keys
(``layer2_0/downsample_conv`` <-> ``layer2.0.downsample.0``), which keeps weight
porting a renaming plus a transpose. Bottleneck blocks put the stride on the
3x3 convolution (torchvision's "ResNet v1.5"), paddings are explicit, and
BatchNorm uses PyTorch's epsilon (1e-5) and momentum (0.1).

Calling a model::

    logits = model.apply(variables, images, train=False)                    # (N, classes)
    logits, feats = model.apply(variables, images, return_features=True)
    # feats: {"stem", "layer1", ..., "layer4", "pooled"}; "pooled" is the
    # (N, C) global-average-pooled feature that linear probes and adaptation
    # losses use; "layerK" are the stage outputs (N, H, W, C) for multi-layer losses.
    new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"])

``num_classes=None`` (or 0) builds the backbone alone: the "logits" are then the
pooled features.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jtl.models.backbones import Family, default_torch_key, register_family
from jtl.models.layers import BatchNorm, Conv, Dense, max_pool_3x3_s2, per_member_op

Dtype = Any


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    features: int
    stride: int = 1
    downsample: bool = False
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda name, **kw: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name, **kw)
        y = Conv(self.features, 3, self.stride, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = Conv(self.features, 3, 1, 1, dtype=self.dtype, name="conv2")(y)
        y = bn("bn2", **_last_bn_init(self.zero_init_residual))(y)
        if self.downsample:
            x = Conv(self.features, 1, self.stride, 0, dtype=self.dtype, name="downsample_conv")(x)
            x = bn("downsample_bn")(x)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, plus the shortcut."""

    features: int
    stride: int = 1
    downsample: bool = False
    zero_init_residual: bool = False
    width_per_group: int = 64
    dtype: Dtype = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda name, **kw: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name, **kw)
        width = self.features * self.width_per_group // 64
        y = Conv(width, 1, 1, 0, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = Conv(width, 3, self.stride, 1, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = Conv(self.features * 4, 1, 1, 0, dtype=self.dtype, name="conv3")(y)
        y = bn("bn3", **_last_bn_init(self.zero_init_residual))(y)
        if self.downsample:
            x = Conv(self.features * 4, 1, self.stride, 0, dtype=self.dtype, name="downsample_conv")(x)
            x = bn("downsample_bn")(x)
        return nn.relu(y + x)


def _last_bn_init(zero_init_residual: bool) -> dict:
    return {"scale_init": nn.initializers.zeros} if zero_init_residual else {}


def mixstyle(x: jax.Array, key: jax.Array, *, alpha: float = 0.1, p: float = 0.5, mode: str = "random",
             eps: float = 1e-6) -> jax.Array:
    """MixStyle (Zhou et al. 2021, "Domain generalization with MixStyle", eq. 4-5) on NHWC maps:
    with probability ``p`` for the batch, ``y = s_mix (x - mu) / s + mu_mix`` where ``mu``, ``s``
    are each sample's per-channel spatial mean and std (held constant in the gradient),
    ``mu_mix = l mu + (1 - l) mu[perm]``, ``s_mix = l s + (1 - l) s[perm]``, ``l ~ Beta(alpha, alpha)``
    per sample. ``mode="random"``: ``perm`` a random permutation of the batch; ``"crossdomain"``:
    the batch's two halves (two domains) swapped, each half shuffled (the paper's
    domain-label variant)."""
    k_apply, k_lam, k_perm, k_perm2 = jax.random.split(key, 4)
    n = x.shape[0]
    xf = x.astype(jnp.float32)
    mu = jax.lax.stop_gradient(jnp.mean(xf, axis=(1, 2), keepdims=True))
    sig = jax.lax.stop_gradient(jnp.sqrt(jnp.var(xf, axis=(1, 2), keepdims=True) + eps))
    lam = jax.random.beta(k_lam, alpha, alpha, (n, 1, 1, 1))
    if mode == "random":
        perm = jax.random.permutation(k_perm, n)
    elif mode == "crossdomain":
        half = n // 2
        back = jnp.arange(n - 1, -1, -1)  # reversed: the second half first
        perm = jnp.concatenate([jax.random.permutation(k_perm, back[:half]), jax.random.permutation(k_perm2, back[half:])])
    else:
        raise ValueError(f"mixstyle mode must be 'random' or 'crossdomain', got {mode!r}")
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    mixed = ((xf - mu) / sig * sig_mix + mu_mix).astype(x.dtype)
    return jnp.where(jax.random.uniform(k_apply) < p, mixed, x)


class ResNet(nn.Module):
    """A ResNet: stem, stages ``layer1..layerK`` of residual blocks, global average pool, ``fc``.

    ``stem="imagenet"``: 7x7/2 convolution (padding 3), BatchNorm, ReLU, 3x3/2 max pool.
    ``stem="cifar"``: 3x3/1 convolution (padding 1), BatchNorm, ReLU, no pooling
    (for 28-32 px images).
    ``frozen``: module names (``"bn1"`` for the stem, a stage ``"layer1"`` or a block
    ``"layer1_0"``) whose BatchNorms use their running averages even in train mode
    (frozen parts; :mod:`jtl.models.backbones`).
    ``mixstyle``: stage names after which :func:`mixstyle` mixes feature statistics in train
    mode (domain generalization, Zhou et al. 2021; default none), with ``mixstyle_p``,
    ``mixstyle_alpha`` and ``mixstyle_mode``; it draws from the ``"dropout"`` rng stream.
    """

    block: str
    stage_sizes: Sequence[int]
    num_classes: int | None = 1000
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "imagenet"
    stem_width: int = 64
    width_per_group: int = 64
    zero_init_residual: bool = False
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32
    mixstyle: Sequence[str] = ()
    mixstyle_p: float = 0.5
    mixstyle_alpha: float = 0.1
    mixstyle_mode: str = "random"

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(f"layer{i + 1}" for i in range(len(self.stage_sizes)))

    @property
    def num_features(self) -> int:
        return self.stage_widths[-1] * (4 if self.block == "bottleneck" else 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        feats = {}
        trains = lambda name: train and name not in self.frozen
        if self.stem == "imagenet":
            x = Conv(self.stem_width, 7, 2, 3, dtype=self.dtype, name="conv1")(x)
        elif self.stem == "cifar":
            x = Conv(self.stem_width, 3, 1, 1, dtype=self.dtype, name="conv1")(x)
        else:
            raise ValueError(f"unknown stem {self.stem!r}; use 'imagenet' or 'cifar'")
        x = BatchNorm(use_running_average=not trains("bn1"), dtype=self.dtype, name="bn1")(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            x = max_pool_3x3_s2(x)
        feats["stem"] = x
        in_features = self.stem_width
        for i, (name, size, width) in enumerate(zip(self.stage_names, self.stage_sizes, self.stage_widths)):
            for j in range(size):
                stride = 2 if (i > 0 and j == 0) else 1
                kw = {"width_per_group": self.width_per_group} if self.block == "bottleneck" else {}
                cls = Bottleneck if self.block == "bottleneck" else BasicBlock
                out_features = width * cls.expansion
                x = cls(
                    width,
                    stride=stride,
                    downsample=j == 0 and (stride != 1 or in_features != out_features),
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"{name}_{j}",
                    **kw,
                )(x, trains(name) and f"{name}_{j}" not in self.frozen)
                in_features = out_features
            if train and name in self.mixstyle:
                x = mixstyle(x, self.make_rng("dropout"), alpha=self.mixstyle_alpha, p=self.mixstyle_p,
                             mode=self.mixstyle_mode)
            feats[name] = x
        pooled = per_member_op(lambda x: jnp.mean(x, axis=(1, 2)))(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
        feats["pooled"] = pooled
        if self.num_classes:
            out = Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled).astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the family
@dataclasses.dataclass(frozen=True)
class Arch:
    """Hyperparameters that define one architecture (everything but the head size)."""

    block: str
    stage_sizes: tuple[int, ...]
    stage_widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "imagenet"
    stem_width: int = 64
    width_per_group: int = 64


def _cifar(n: int) -> tuple[Arch, str]:
    return Arch("basic", (n, n, n), (16, 32, 64), "cifar", 16), f"CIFAR ResNet-{6 * n + 2} (He et al. 2016, sec. 4.2)"


_ARCHS: dict[str, tuple[Arch, str]] = {
    # torchvision ImageNet ResNets.
    "resnet18": (Arch("basic", (2, 2, 2, 2)), "torchvision resnet18"),
    "resnet34": (Arch("basic", (3, 4, 6, 3)), "torchvision resnet34"),
    "resnet50": (Arch("bottleneck", (3, 4, 6, 3)), "torchvision resnet50"),
    "resnet101": (Arch("bottleneck", (3, 4, 23, 3)), "torchvision resnet101"),
    "resnet152": (Arch("bottleneck", (3, 8, 36, 3)), "torchvision resnet152"),
    "wide_resnet50_2": (Arch("bottleneck", (3, 4, 6, 3), width_per_group=128), "torchvision wide_resnet50_2"),
    # Small ResNets for 28-32 px images.
    "resnet18_cifar": (Arch("basic", (2, 2, 2, 2), stem="cifar"), "ResNet-18 with a 3x3/1 stem and no max pool"),
    "cifar_resnet8": _cifar(1),
    "cifar_resnet14": _cifar(2),
    "cifar_resnet20": _cifar(3),
    "cifar_resnet32": _cifar(5),
    "cifar_resnet56": _cifar(9),
}
ARCHS = {name: dataclasses.asdict(arch) for name, (arch, _) in _ARCHS.items()}
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2")


def torch_key(path: tuple[str, ...]) -> str:
    """torchvision's key of a variable: ``layer2_0/downsample_conv/kernel`` -> ``layer2.0.downsample.0.weight``."""
    renamed = tuple({"downsample_conv": "downsample_0", "downsample_bn": "downsample_1"}.get(m, m) for m in path)
    return default_torch_key(renamed)


def layer_id(arch: str, path: str) -> int:
    """0 for the stem (``conv1``, ``bn1``), k for stage ``layerk``."""
    m = re.match(r"layer(\d+)_", path)
    return int(m.group(1)) if m else 0


def num_layers(arch: str) -> int:
    return len(ARCHS[arch]["stage_sizes"])


FAMILY = register_family(Family(
    "resnet", ResNet, ARCHS, classifier="fc", torch_archs=TORCHVISION_ARCHS, torch_key=torch_key,
    taps=lambda arch: tuple(f"layer{i + 1}" for i in range(num_layers(arch))),
    layer_id=layer_id, num_layers=num_layers, docs={n: doc for n, (_, doc) in _ARCHS.items()}))
