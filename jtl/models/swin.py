"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021), NHWC, with timm's exact arithmetic and state-dict names
(timm 1.0.31).

For an (N, H, W, 3) batch, patch size p and window M::

    patch_embed:  z = LN(conv_pxp/p(x))                         (N, H/p, W/p, C)
    stage i > 0:  z = reduction(LN([z00; z10; z01; z11]))      patch merging, z_ab = z[:, a::2, b::2],
                                                               channels 4C -> 2C, no bias
    block j:      z = z + dp(shift^-1(W-MSA(shift(LN(z)))));  z = z + dp(fc2(GELU(fc1(LN(z)))))
    head:         f = mean_hw(LN(z)),  logits = head_fc(f)      (norm, head_fc)

W-MSA splits the map into M x M windows and runs multi-head self-attention inside each::

    attn = softmax(q k^T / sqrt(d) + B + mask) v,   B[h, i, j] = table[idx(i, j), h]

with the learned relative position bias ``table`` ((2M-1)^2, heads) indexed by the
relative offset of tokens i and j (``idx = (dy + M - 1)(2M - 1) + dx + M - 1``). Odd
blocks shift: ``shift`` rolls the map by -M//2 rows and columns (not along an axis that
is a single window), and ``mask`` is -100 between tokens that the roll brought from
different image regions, else 0. ``idx`` and ``mask`` are constants: timm 1.0 keeps them as
non-persistent buffers, absent from its state dict (older checkpoints hold them and
timm's checkpoint filter drops them). LayerNorm eps is 1e-5 (torch's default); GELU is
exact (erf); ``dp`` is stochastic depth, rates rising linearly to ``drop_path_rate``.

``features["pooled"]`` (float32) is timm's pre-logits ``f``; ``features["stage0".."stage3"]``
are the stage outputs (N, H/4..H/32, W/4..W/32, C). ``frozen`` names top-level modules
(``patch_embed``, ``layers_1``, ``norm``): stochastic depth is off in frozen stages.

Input sizes: every stage's map must be a whole number of windows (224 px and multiples for
``swin_tiny_patch4_window7_224``); others raise :class:`ConfigError`. (timm pads such maps,
and shrinks the window, and so the bias table, where a map is smaller than the window.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jtl.errors import ConfigError
from jtl.models.backbones import Family, default_torch_key, register_family
from jtl.models.convnext import Mlp, PatchConv, drop_path, drop_path_rates, layer_norm, trunc_normal
from jtl.models.layers import Dense

Dtype = Any


def relative_position_index(m: int) -> np.ndarray:
    """(M^2, M^2) index into the bias table of the offset between tokens i and j of an M x M
    window: ``(y_i - y_j + M - 1) (2M - 1) + x_i - x_j + M - 1``."""
    y, x = np.divmod(np.arange(m * m), m)
    return (y[:, None] - y[None, :] + m - 1) * (2 * m - 1) + (x[:, None] - x[None, :] + m - 1)


def shifted_window_mask(h: int, w: int, m: int, shift: tuple[int, int]) -> np.ndarray:
    """(windows, M^2, M^2) additive mask of shifted-window attention on an h x w map rolled by
    ``shift`` = (s_h, s_w): label the rows ``[0, h-M), [h-M, h-s_h), [h-s_h, h)`` (likewise the
    columns) 0..8, partition the labels into windows; -100 where two tokens' labels differ."""
    bands = lambda n, s: np.concatenate([np.zeros(n - m, int), np.ones(m - s, int), np.full(s, 2)])
    labels = bands(h, shift[0])[:, None] * 3 + bands(w, shift[1])[None, :]
    windows = partition(labels[None, :, :, None], m)[0, :, :, 0]  # (windows, M^2)
    return np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)


def partition(x, m: int):
    """(N, H, W, C) -> (N, windows, M^2, C), windows in row-major order, tokens row-major."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // m, m, w // m, m, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // m) * (w // m), m * m, c)


def merge(windows, m: int, h: int, w: int):
    """Inverse of :func:`partition`."""
    n, c = windows.shape[0], windows.shape[-1]
    x = windows.reshape(n, h // m, w // m, m, m, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with relative position bias (and a mask)."""

    num_heads: int
    window: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        n, nw, t, c = x.shape  # (batch, windows, M^2 tokens, channels)
        heads, m = self.num_heads, self.window
        hd = c // heads
        table = self.param("relative_position_bias_table", trunc_normal(0.02), ((2 * m - 1) ** 2, heads), jnp.float32)
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(x.reshape(-1, c)).reshape(n, nw, t, 3, heads, hd)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # (N, windows, T, heads, d)
        q = q * jnp.asarray(hd ** -0.5, q.dtype)
        logits = jnp.einsum("nwqhd,nwkhd->nwhqk", q, k).astype(jnp.float32)
        bias = table[relative_position_index(m).reshape(-1)].reshape(t, t, heads).transpose(2, 0, 1)
        logits = logits + bias
        if mask is not None:
            logits = logits + jnp.asarray(mask)[:, None]  # (windows, 1, T, T)
        attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        y = jnp.einsum("nwhqk,nwkhd->nwqhd", attn, v).reshape(-1, c)
        return Dense(c, dtype=self.dtype, name="proj")(y).reshape(n, nw, t, c)


class SwinBlock(nn.Module):
    """``z + dp(W-MSA(LN(z)))`` on (shifted) windows, then ``z + dp(MLP(LN(z)))``."""

    num_heads: int
    window: int
    shifted: bool = False
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        n, h, w, c = x.shape
        m = self.window
        s = tuple(m // 2 if self.shifted and size > m else 0 for size in (h, w))  # no shift along one window
        y = layer_norm(1e-5, self.dtype, "norm1")(x)
        if any(s):
            y = jnp.roll(y, (-s[0], -s[1]), axis=(1, 2))
        mask = shifted_window_mask(h, w, m, s) if any(s) else None
        y = WindowAttention(self.num_heads, m, dtype=self.dtype, name="attn")(partition(y, m), mask)
        y = merge(y, m, h, w)
        if any(s):
            y = jnp.roll(y, s, axis=(1, 2))
        x = x.astype(self.dtype) + drop_path(self, y, self.drop_path, train)
        y = Mlp(int(self.mlp_ratio * c), dtype=self.dtype, name="mlp")(layer_norm(1e-5, self.dtype, "norm2")(x))
        return x + drop_path(self, y, self.drop_path, train)


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated as ``[z00; z10; z01; z11]`` (row offset fastest), LN, 4C -> ``dim``."""

    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(n, h // 2, w // 2, 4 * c)
        x = layer_norm(1e-5, self.dtype, "norm")(x)
        return Dense(self.dim, use_bias=False, dtype=self.dtype, name="reduction")(x)


class SwinStage(nn.Module):
    """Patch merging (stages after the first), then blocks; odd blocks use shifted windows."""

    dim: int
    num_heads: int
    window: int
    drop_paths: Sequence[float]
    downsample: bool = True
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.downsample:
            x = PatchMerging(self.dim, dtype=self.dtype, name="downsample")(x)
        for j, rate in enumerate(self.drop_paths):
            x = SwinBlock(self.num_heads, self.window, j % 2 == 1, self.mlp_ratio, rate, dtype=self.dtype,
                          name=f"blocks_{j}")(x, train)
        return x


class SwinTransformer(nn.Module):
    """Swin: p x p patch embedding, four stages of (shifted-)window attention blocks with
    patch merging between them, final LayerNorm, average pool, ``head_fc``."""

    num_classes: int | None = 1000
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def check_size(self, h: int, w: int) -> None:
        unit = self.patch_size * 2 ** (len(self.depths) - 1) * self.window_size
        if h % unit or w % unit or h == 0 or w == 0:
            raise ConfigError(
                f"Swin (patch {self.patch_size}, window {self.window_size}) needs image sides that are multiples "
                f"of {unit} (every stage's map a whole number of windows); got {h}x{w}: resize the images")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        self.check_size(x.shape[1], x.shape[2])
        feats = {}
        x = PatchEmbed(self.embed_dim, self.patch_size, dtype=self.dtype, name="patch_embed")(x)
        rates = drop_path_rates(self.drop_path_rate, self.depths)
        for i, (heads, drop_paths) in enumerate(zip(self.num_heads, rates)):
            name = f"layers_{i}"
            x = SwinStage(self.embed_dim * 2 ** i, heads, self.window_size, tuple(drop_paths), downsample=i > 0,
                          mlp_ratio=self.mlp_ratio, dtype=self.dtype, name=name)(x, train and name not in self.frozen)
            feats[f"stage{i}"] = x
        x = layer_norm(1e-5, self.dtype, "norm")(x)
        pooled = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
        feats["pooled"] = pooled
        if self.num_classes:
            out = Dense(self.num_classes, dtype=self.dtype, name="head_fc")(pooled).astype(pooled.dtype)
        else:
            out = pooled
        return (out, feats) if return_features else out


class PatchEmbed(nn.Module):
    """``LN(conv_pxp/p(x))``: ``proj`` and ``norm``."""

    dim: int
    patch: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = PatchConv(self.dim, self.patch, dtype=self.dtype, name="proj")(x)
        return layer_norm(1e-5, self.dtype, "norm")(x)


# ---------------------------------------------------------------------------------- the family
def torch_key(path: tuple[str, ...]) -> str:
    """timm's key: ``layers_1/blocks_0/attn/qkv/kernel`` -> ``layers.1.blocks.0.attn.qkv.weight``;
    ``head_fc`` -> ``head.fc``."""
    return default_torch_key(tuple(p for m in path for p in (("head", "fc") if m == "head_fc" else (m,))))


@dataclasses.dataclass(frozen=True)
class Arch:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    patch_size: int = 4


_ARCHS: dict[str, tuple[Arch, str]] = {
    "swin_tiny_patch4_window7_224": (Arch(96, (2, 2, 6, 2), (3, 6, 12, 24)),
                                     "Swin-T (Liu et al. 2021), timm swin_tiny_patch4_window7_224; 224 px multiples"),
}
ARCHS = {name: dataclasses.asdict(arch) for name, (arch, _) in _ARCHS.items()}

FAMILY = register_family(Family("swin", SwinTransformer, ARCHS, classifier="head_fc", torch_archs=tuple(ARCHS),
                                torch_key=torch_key, ignored_keys=(r"\.relative_position_index$", r"\.attn_mask$"),
                                docs={n: doc for n, (_, doc) in _ARCHS.items()}))
