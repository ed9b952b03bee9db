"""PyTorch reference ViT and ConvNeXt for the benchmarks of :mod:`jtl.bench` (torch 2.x, no timm).

Written from the architectures (the papers, and the layer list of timm 1.0 that
``jtl/models/vit.py`` and ``jtl/models/convnext.py`` reproduce), with exactly jtl's parameters
(shapes and counts; ``tests/test_perf_numerics.py`` compares them):

- ``vit_small_patch16_224`` (ViT-S/16; ``vit_tiny_*`` / ``vit_base_*`` by width): a 16x16/16
  patch convolution with bias, a class token, a learned (1, 1 + 14*14, D) position embedding,
  12 pre-norm blocks ``x + proj(SDPA(qkv(LN(x))))``, ``x + fc2(GELU(fc1(LN(x))))`` (fused
  ``qkv`` projection with bias, ``torch.nn.functional.scaled_dot_product_attention`` as timm 1.0
  runs it with ``fused_attn``, exact erf GELU, MLP 4x wide, LayerNorm eps 1e-6), a final
  LayerNorm and a linear head on the class token. 224 px inputs (the stored position grid).
- ``convnext_tiny`` (ConvNeXt-T; ``_small`` / ``_base`` by depth and width): a 4x4/4 stem
  convolution + channels LayerNorm, four stages (depths 3-3-9-3, widths 96-192-384-768) whose
  later three start with ``LN`` + a 2x2/2 convolution; a block is ``x + gamma * fc2(GELU(fc1(
  LN(dwconv7x7(x)))))`` with the depthwise 7x7 convolution (padding 3, bias) in NCHW and the
  LayerNorm / MLP / LayerScale ``gamma`` (init 1e-6) channels-last, as timm's ``conv_mlp=False``
  block; head: global average pool, LayerNorm, linear. All LayerNorms eps 1e-6.

``forward(x) -> (logits, pooled)`` as :class:`jtl.bench.torch_models.ResNet`; ``num_classes=None``
drops the head (``logits`` is then ``pooled``). Dropout and stochastic depth are off (rate 0),
as in jtl's benchmark. This module imports torch (a dev extra).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (n, heads, t, d_h); scale d_h^-1/2
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, num_classes: int | None = 1000,
                 patch_size: int = 16, img_size: int = 224):
        super().__init__()
        grid = img_size // patch_size
        self.grid = grid
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=EPS)
        self.num_features = embed_dim
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else None
        if not self.pos_embed.is_meta:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)  # (n, D, g, g)
        if x.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"this reference ViT takes {self.grid * 16} px inputs, got {tuple(x.shape[-2:])} patches")
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        pooled = x[:, 0]
        return (self.head(pooled) if self.head is not None else pooled), pooled


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permuted to channels-last and back)."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, ls_init: float = 1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))

    def forward(self, x):
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # channels-last for the LayerNorm and the MLP
        y = self.mlp(self.norm(y)) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, depths, dims, num_classes: int | None = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=EPS))
        stages, cin = [], dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            down = [LayerNorm2d(cin, eps=EPS), nn.Conv2d(cin, dim, 2, 2)] if i > 0 else []
            stages.append(nn.Sequential(*down, *[ConvNeXtBlock(dim) for _ in range(depth)]))
            cin = dim
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(cin, eps=EPS)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes) if num_classes else None
        if not self.head_norm.weight.is_meta:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stages(self.stem(x))
        pooled = self.head_norm(x.mean((2, 3)))
        return (self.head(pooled) if self.head is not None else pooled), pooled


VIT_ARCHS = {f"vit_{k}_patch16_224": dict(embed_dim=d, depth=12, num_heads=h)
             for k, d, h in (("tiny", 192, 3), ("small", 384, 6), ("base", 768, 12))}
CONVNEXT_ARCHS = {
    "convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "convnext_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "convnext_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


def create_model(name: str, num_classes: int | None = 1000) -> nn.Module:
    if name in VIT_ARCHS:
        return VisionTransformer(num_classes=num_classes, **VIT_ARCHS[name])
    return ConvNeXt(num_classes=num_classes, **CONVNEXT_ARCHS[name])
