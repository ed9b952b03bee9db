"""The benchmark cases: architecture, classes, image size, batch, and their random data."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Case(NamedTuple):
    """A train step to time. ``dann``: jtl's DANN adaptation step, ``batch`` source + ``batch``
    target images in one forward pass (``rows`` images in all)."""

    arch: str
    num_classes: int
    size: int
    batch: int
    dann: bool = False

    @property
    def rows(self) -> int:
        return 2 * self.batch if self.dann else self.batch


CASES = {  # CPU, float32
    "resnet18_64": Case("resnet18", 1000, 64, 64),
    "resnet18_128": Case("resnet18", 1000, 128, 32),
    "resnet50_128": Case("resnet50", 1000, 128, 16),
    "cifar8_32": Case("cifar_resnet8", 5, 32, 128),
    "dann_32": Case("cifar_resnet8", 5, 32, 128, True),
    # Beyond ResNet (run only when named: each takes minutes on 2 cores, see ON_DEMAND).
    "vit_s16_224": Case("vit_small_patch16_224", 1000, 224, 32),
    "convnext_t_224": Case("convnext_tiny", 1000, 224, 16),
}
# Cases that scripts/bench_train_step.py runs only when ``--cases`` names them (or ``--cases all``):
# a 224 px ViT-S/16 or ConvNeXt-T step takes seconds, so with the PyTorch setting search and
# the interleaved rounds each case takes several minutes on the 2-core development machine.
ON_DEMAND = ("vit_s16_224", "convnext_t_224")
DEFAULT_CASES = tuple(n for n in CASES if n not in ON_DEMAND)
GPU_CASES = {
    # jtl compute_dtype bfloat16 (params float32) against PyTorch eager under torch.autocast(bfloat16),
    # channels-last.
    "resnet50_224_bf16": Case("resnet50", 1000, 224, 256),
    "vit_b16_224_bf16": Case("vit_base_patch16_224", 1000, 224, 256),
}
BOTTLENECK, DISC_HIDDEN = 256, 1024  # jtl.config defaults (adapt.bottleneck_dim, adapt.disc_hidden)
DANN_LOSS = (("ce", 1.0), ("dann", 1.0))  # the DANN case's loss pieces
LR = 0.01  # SGD, momentum 0.9, in both frameworks
TOTAL_STEPS = 1000  # the progress p = step / TOTAL_STEPS of DANN's reversal coefficient


def make_data(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images ``(rows, size, size, 3)`` float32, standard normal; labels ``(batch,)`` int32)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, case.num_classes, case.batch).astype(np.int32)
    x = rng.standard_normal((case.rows, case.size, case.size, 3), np.float32)
    return x, y

