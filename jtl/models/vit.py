"""Vision Transformers (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) and
DeiT (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021), NHWC, with timm's exact arithmetic and state-dict names.

For an (N, H, W, 3) batch and patch size p, the ``(H/p)(W/p)`` patches are embedded by a
p x p / p convolution ``patch_embed/proj``; the class token (and DeiT's distillation
token) is prepended and the learned position embedding added::

    z_0 = [cls; (dist;) patches] + pos_embed
    z_l = z_{l-1}' + MLP(LN(z_{l-1}')),   z_{l-1}' = z_{l-1} + MSA(LN(z_{l-1}))   (l = 1..depth)
    MSA(x) = proj(concat_h softmax(q_h k_h^T / sqrt(d_h)) v_h),  [q; k; v] = qkv(x)
    MLP(x) = fc2(GELU(fc1(x)))   (exact erf GELU, hidden width 4 D)

with LayerNorm eps 1e-6, then the final ``norm``. The classifier ``head`` reads the class
token; a distilled DeiT averages ``head(cls)`` and ``head_dist(dist)`` (timm's output in
eval mode and in ordinary, non-distillation training).

``features["pooled"]`` (float32) is the classifier input: the normed class token, or for
a distilled DeiT the mean of the normed class and distillation tokens (timm's
``pre_logits``; a new linear head on it is what fine-tuning trains). ``features["blocks_i"]``
is block i's output token sequence (N, T, D), prefix tokens first, one per block (named
like the modules; jit returns dicts with sorted keys, so order by i, not by dict order).

Input sizes: the position embedding is stored for ``img_size`` (224) and resampled when
the input grid differs, as timm's ``resample_abs_pos_embed`` does (bicubic, antialiased,
prefix tokens kept; :func:`resample_pos_embed`). ``FAMILY.resize`` does the same once on
the variables, which then hold the new grid; the module adopts the grid it is given.

Train mode draws dropout and stochastic depth (per-sample residual-branch drop, rates
rising linearly to ``drop_path_rate`` over the blocks) from the ``"dropout"`` stream. Both
are off in frozen parts: ``frozen`` names top-level modules/parameters (``patch_embed``,
``cls_token``, ``pos_embed``, ``blocks_3``, ``head`` ...); a frozen ``blocks_i`` runs
without dropout or drop path, a frozen ``pos_embed`` without ``pos_drop_rate``, a frozen
``head`` without ``drop_rate`` (which only feeds this module's own classifier(s)).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jtl.errors import ConfigError
from jtl.models.backbones import Family, default_torch_key, family_of, register_family
from jtl.models import attention
from jtl.models.layers import per_member_op, torch_linear_init

Dtype = Any


def trunc_normal(std: float):
    """timm's ``trunc_normal_(std)``: N(0, std^2) cut at the absolute bounds +-2."""
    return lambda key, shape, dtype=jnp.float32: std * jax.random.truncated_normal(key, -2 / std, 2 / std, shape, dtype)


class Linear(nn.Module):
    """``y = x W + b`` with timm's ViT initialisation (W ~ trunc_normal(0.02), b = 0)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", trunc_normal(0.02), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        return per_member_op(lambda x, w, b: jnp.dot(x, w) + b)(x, kernel, bias)


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (biased variance,
    two-pass, in float32 whatever the compute dtype), eps 1e-6 as timm's ViTs."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and scale ``d_h^-1/2``."""

    num_heads: int
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        n, t, d = x.shape
        hd = d // self.num_heads
        qkv = Linear(3 * d, dtype=self.dtype, name="qkv")(x).reshape(n, t, 3, self.num_heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (N, T, heads, d_h)
        if self.attn_drop == 0.0 or deterministic:
            y = attention.attend(q, k, v).reshape(n, t, d)
        else:
            attn = attention.attention_weights(q, k)
            attn = nn.Dropout(self.attn_drop)(attn, deterministic=deterministic)
            y = attention.head_major(jnp.einsum("nhqk,nhkd->nhqd", attn, attention.head_major(v))).reshape(n, t, d)
        y = Linear(d, dtype=self.dtype, name="proj")(y)
        return nn.Dropout(self.proj_drop)(y, deterministic=deterministic)


class Mlp(nn.Module):
    """``fc2(drop(GELU(fc1(x))))`` with the exact (erf) GELU."""

    hidden: int
    drop: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        d = x.shape[-1]
        y = nn.gelu(Linear(self.hidden, dtype=self.dtype, name="fc1")(x), approximate=False)
        y = nn.Dropout(self.drop)(y, deterministic=deterministic)
        y = Linear(d, dtype=self.dtype, name="fc2")(y)
        return nn.Dropout(self.drop)(y, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm block: ``x + dp(attn(norm1(x)))``, then ``x + dp(mlp(norm2(x)))``; ``dp``
    drops a sample's whole branch with probability ``drop_path`` and scales kept ones by
    ``1 / (1 - drop_path)`` (stochastic depth)."""

    num_heads: int
    mlp_ratio: float = 4.0
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        dp = nn.Dropout(self.drop_path, broadcast_dims=(1, 2))
        y = Attention(self.num_heads, self.attn_drop, self.proj_drop, self.dtype, name="attn")(
            LayerNorm(dtype=self.dtype, name="norm1")(x), deterministic)
        x = x + dp(y, deterministic=deterministic)
        y = Mlp(int(x.shape[-1] * self.mlp_ratio), self.proj_drop, self.dtype, name="mlp")(
            LayerNorm(dtype=self.dtype, name="norm2")(x), deterministic)
        return x + dp(y, deterministic=deterministic)


class PatchEmbed(nn.Module):
    """``proj``: the p x p convolution with stride p (and bias), written as one matrix
    product of the flattened patches (HWIO kernel, so ports transpose it as a convolution)."""

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _PatchConv(self.patch_size, self.embed_dim, self.dtype, name="proj")(x)


class _PatchConv(nn.Module):
    patch_size: int
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, (n, h, w, c) = self.patch_size, x.shape
        if h % p or w % p:
            raise ConfigError(f"ViT input {h}x{w} is not a multiple of the patch size {p}; use image_size = k*{p}")
        fan_in = p * p * c  # torch.nn.Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weight and bias
        kernel = self.param("kernel", lambda k, s, d: torch_linear_init(0)(k, (fan_in, s[-1]), d).reshape(s),
                            (p, p, c, self.features), jnp.float32)
        bias = self.param("bias", lambda k, s, d: torch_linear_init(0)(k, (fan_in, *s), d)[0], (self.features,),
                          jnp.float32)
        patches = x.astype(self.dtype).reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(n, (h // p) * (w // p), fan_in)  # (di, dj, c) order = HWIO's
        mm = lambda a, k, b: jnp.dot(a, k.reshape(fan_in, -1)) + b
        return per_member_op(mm)(patches, kernel.astype(self.dtype), bias.astype(self.dtype))


# ----------------------------------------------------------------- position-embedding resampling
def _cubic_aa(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5 (PyTorch's antialiased bicubic, as PIL)."""
    a, x = -0.5, np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_aa_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of ``F.interpolate(mode="bicubic", align_corners=False,
    antialias=True)`` along one axis: output i is centred at ``s (i + 1/2)`` (s = n_in/n_out)
    and takes the input pixels within ``2 max(s, 1)``, weighted by the cubic kernel at
    ``(j + 1/2 - centre) / max(s, 1)`` and normalised to sum 1 (edges renormalise)."""
    s = n_in / n_out
    support, stretch = 2.0 * max(s, 1.0), max(s, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = s * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = _cubic_aa((np.arange(lo, hi) - centre + 0.5) / stretch)
        m[i, lo:hi] = w / w.sum()
    return m


def resample_pos_embed(pos: jax.Array, grid: tuple[int, int], num_prefix: int, xp=jnp) -> jax.Array:
    """(1, P + g*g, D) position embedding -> (1, P + grid_h*grid_w, D): the P prefix-token
    rows kept, the square g x g grid resampled separably ``Mh G Mw^T`` with
    :func:`bicubic_aa_matrix` (timm's ``resample_abs_pos_embed`` defaults). ``xp``: jnp or np."""
    prefix, rest = pos[:, :num_prefix], pos[:, num_prefix:]
    g = int(round(np.sqrt(rest.shape[1])))
    if g * g != rest.shape[1]:
        raise ConfigError(f"position embedding of {rest.shape[1]} patches is not a square grid")
    if (g, g) == tuple(grid):
        return pos
    mh, mw = (xp.asarray(bicubic_aa_matrix(g, n), rest.dtype) for n in grid)
    out = xp.einsum("ih,nhwd,jw->nijd", mh, rest.reshape(1, g, g, -1), mw)
    return xp.concatenate([prefix, out.reshape(1, grid[0] * grid[1], -1).astype(pos.dtype)], axis=1)


# ------------------------------------------------------------------------------------- model
class VisionTransformer(nn.Module):
    """ViT / DeiT backbone (module docstring); ``distilled`` adds DeiT's distillation token
    and ``head_dist``. ``img_size`` only sets the stored position grid of a fresh init."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    distilled: bool = False
    img_size: int = 224
    num_classes: int | None = 1000
    drop_rate: float = 0.0  # dropout on the classifier input (timm's head_drop)
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    frozen: Sequence[str] = ()
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        return self.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        det = lambda name: not train or name in self.frozen
        d, p = self.embed_dim, self.patch_size
        grid = (x.shape[1] // p, x.shape[2] // p)
        tokens = PatchEmbed(p, d, self.dtype, name="patch_embed")(x)
        n = tokens.shape[0]
        prefix = [self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)]
        if self.distilled:
            prefix.append(self.param("dist_token", trunc_normal(0.02), (1, 1, d), jnp.float32))
        # The stored grid is the variables' own (224 px, or what FAMILY.resize made), else img_size's.
        stored = (self.get_variable("params", "pos_embed").shape[1] if self.has_variable("params", "pos_embed")
                  else self.num_prefix_tokens + (self.img_size // p) ** 2)
        pos = self.param("pos_embed", trunc_normal(0.02), (1, stored, d), jnp.float32)
        pos = resample_pos_embed(pos, grid, self.num_prefix_tokens)
        prefix = [jnp.broadcast_to(t.astype(self.dtype), (n, 1, d)) for t in prefix]
        x = jnp.concatenate(prefix + [tokens], axis=1) + pos.astype(self.dtype)
        x = nn.Dropout(self.pos_drop_rate)(x, deterministic=det("pos_embed"))
        feats = {}
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)  # timm's linear stochastic-depth rule
        for i in range(self.depth):
            name = f"blocks_{i}"
            x = Block(self.num_heads, self.mlp_ratio, self.proj_drop_rate, self.attn_drop_rate, float(rates[i]),
                      self.dtype, name=name)(x, det(name))
            feats[name] = x
        x = LayerNorm(dtype=self.dtype, name="norm")(x)
        f32 = jnp.promote_types(x.dtype, jnp.float32)
        cls = x[:, 0].astype(f32)
        dist = x[:, 1].astype(f32) if self.distilled else None
        feats["pooled"] = (cls + dist) / 2 if self.distilled else cls
        if not self.num_classes:
            out = feats["pooled"]
        else:
            head_drop = lambda t: nn.Dropout(self.drop_rate)(t, deterministic=det("head"))
            out = Linear(self.num_classes, self.dtype, name="head")(head_drop(cls)).astype(f32)
            if self.distilled:
                out = (out + Linear(self.num_classes, self.dtype, name="head_dist")(head_drop(dist)).astype(f32)) / 2
        return (out, feats) if return_features else out


# ---------------------------------------------------------------------------------- the family
def _arch(dim: int, heads: int, distilled: bool = False) -> dict:
    return {"patch_size": 16, "embed_dim": dim, "depth": 12, "num_heads": heads, "distilled": distilled}


_ARCHS: dict[str, tuple[dict, str]] = {
    "vit_tiny_patch16_224": (_arch(192, 3), "ViT-Ti/16 (timm; augreg weights)"),
    "vit_small_patch16_224": (_arch(384, 6), "ViT-S/16 (timm; augreg in21k / in21k->in1k weights)"),
    "vit_base_patch16_224": (_arch(768, 12), "ViT-B/16 (timm; augreg / augreg2 / orig in21k weights)"),
    "deit_tiny_patch16_224": (_arch(192, 3), "DeiT-Ti (Touvron et al. 2021)"),
    "deit_small_patch16_224": (_arch(384, 6), "DeiT-S (Touvron et al. 2021)"),
    "deit_base_patch16_224": (_arch(768, 12), "DeiT-B (Touvron et al. 2021)"),
    "deit_tiny_distilled_patch16_224": (_arch(192, 3, True), "DeiT-Ti with distillation token"),
    "deit_small_distilled_patch16_224": (_arch(384, 6, True), "DeiT-S with distillation token"),
    "deit_base_distilled_patch16_224": (_arch(768, 12, True), "DeiT-B with distillation token"),
}
ARCHS = {name: spec for name, (spec, _) in _ARCHS.items()}


def resize(variables: dict, arch: str, image_size: int) -> dict:
    """``variables`` (family layout, or the transfer layout's ``params/backbone``) with the
    position embedding resampled for ``image_size`` px inputs exactly as timm's
    ``checkpoint_filter_fn`` does when it loads a checkpoint into ``img_size=image_size``."""
    spec = family_of(arch).archs[arch]
    p = spec["patch_size"]
    if image_size <= 0 or image_size % p:
        raise ConfigError(f"{arch} needs an image size that is a multiple of {p}, got {image_size}")
    params = dict(variables["params"])
    tree = dict(params["backbone"]) if "backbone" in params else params
    pos = np.asarray(tree["pos_embed"])
    new = resample_pos_embed(pos.astype(np.float64), (image_size // p,) * 2, 2 if spec["distilled"] else 1, xp=np)
    tree["pos_embed"] = new.astype(pos.dtype)
    if "backbone" in params:
        params["backbone"] = tree
    return {**variables, "params": params}


def layer_id(arch: str, path: str) -> int:
    """BEiT's numbering for layer-wise lr decay: tokens, position embedding and patch embedding 0,
    block i i + 1, the final norm depth + 1 (with the head)."""
    top = path.split("/")[0]
    if top in ("cls_token", "dist_token", "pos_embed", "patch_embed"):
        return 0
    if top.startswith("blocks_"):
        return int(top.split("_")[1]) + 1
    return ARCHS[arch]["depth"] + 1


FAMILY = register_family(Family(
    "vit", VisionTransformer, ARCHS, classifier="head", extra_classifiers=("head_dist",), torch_archs=tuple(ARCHS),
    torch_key=default_torch_key, resize=resize, image_size_field="img_size", layer_id=layer_id, num_layers=lambda arch: ARCHS[arch]["depth"],
    docs={n: doc for n, (_, doc) in _ARCHS.items()}))
