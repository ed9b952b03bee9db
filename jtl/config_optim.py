"""Range checks of ``cfg.optim`` (part of :func:`jtl.config.validate`), one line each."""

from __future__ import annotations

import math

from jtl.errors import ConfigError


def check_optim(optim, total_steps: int) -> None:
    """lr, clip_norm and weight decay finite and >= 0; known optimizer and schedule; SGD momentum in
    [0, 1); warm-up shorter than the run; optim.groups entries (name, regex, lr_mult); layer decay
    in [0, 1]."""
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(math.isfinite(optim.lr) and optim.lr >= 0, f"optim.lr must be a finite non-negative number, got {optim.lr}")
    need(math.isfinite(optim.clip_norm) and optim.clip_norm >= 0,
         f"optim.clip_norm must be finite and >= 0 (0 = off), got {optim.clip_norm}")
    need(math.isfinite(optim.weight_decay) and optim.weight_decay >= 0,
         f"optim.weight_decay must be finite and >= 0, got {optim.weight_decay}")
    need(optim.name in ("sgd", "adam", "adamw"), f"optim.name must be sgd, adam or adamw, got {optim.name!r}")
    need(optim.schedule in ("constant", "cosine", "step", "inv"),
         f"optim.schedule must be constant, cosine, step or inv, got {optim.schedule!r}")
    if optim.name == "sgd":
        need(math.isfinite(optim.momentum) and 0 <= optim.momentum < 1,
             f"optim.momentum must be in [0, 1) (0 = plain SGD), got {optim.momentum}")
    need(0 <= optim.warmup_steps < total_steps,
         f"optim.warmup_steps={optim.warmup_steps} must be >= 0 and less than total_steps={total_steps}")
    for group in optim.groups:
        need(isinstance(group, tuple) and len(group) == 3, f"optim.groups entries are (name, regex, lr_mult), got {group!r}")
    need(0 <= optim.layer_decay <= 1, f"optim.layer_decay must be in (0, 1] (0 = off), got {optim.layer_decay}")
