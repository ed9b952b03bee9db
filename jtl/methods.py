"""Domain-adaptation methods as compositions of loss pieces (see :mod:`jtl.train.adapt`).

Each method is a weighted list of pieces plus the pieces' options; nothing else
distinguishes methods, so "DANN + MCC + entropy" is ``{**METHODS["dann"], "mcc": 1.0, "entropy": 0.1}``.
Weights follow the papers' defaults for their trade-off parameters.
"""

from __future__ import annotations

METHODS: dict[str, dict[str, float]] = {
    "source_only": {"ce": 1.0},
    "dann": {"ce": 1.0, "dann": 1.0},  # Ganin et al. 2016
    "cdan": {"ce": 1.0, "cdan": 1.0},  # Long et al. 2018 (CDAN+E: entropy weights on)
    "dan": {"ce": 1.0, "mmd": 1.0},  # Long et al. 2015
    "jan": {"ce": 1.0, "jmmd": 1.0},  # Long et al. 2017
    "coral": {"ce": 1.0, "coral": 1.0},  # Sun & Saenko 2016
    "mdd": {"ce": 1.0, "mdd": 1.0},  # Zhang et al. 2019
    "wdgrl": {"ce": 1.0, "wdgrl": 1.0},  # Shen et al. 2018
    "mcd": {"ce": 1.0, "mcd": 1.0},  # Saito et al. 2018 (three-step update)
    "bsp": {"ce": 1.0, "cdan": 1.0, "bsp": 1e-4},  # Chen et al. 2019, on CDAN as in the paper
    "afn": {"ce": 1.0, "afn": 0.05},  # Xu et al. 2019 (SAFN, delta 1.0)
    "mcc": {"ce": 1.0, "mcc": 1.0},  # Jin et al. 2020
    "bnm": {"ce": 1.0, "bnm": 1.0},  # Cui et al. 2020
    "entropy": {"ce": 1.0, "entropy": 0.1},  # Grandvalet & Bengio 2005
    "im": {"ce": 1.0, "im": 1.0},  # information maximisation (SHOT-style objective)
    "fixmatch": {"ce": 1.0, "fixmatch": 1.0},  # Sohn et al. 2020 on the target domain
}

OPTIONS: dict[str, dict] = {
    "cdan": {"cdan": {"entropy": True}},
    "bsp": {"cdan": {"entropy": True}},
    "fixmatch": {"fixmatch": {"threshold": 0.9}},
}


def method(name: str) -> dict[str, float]:
    from jtl.errors import ConfigError  # noqa: PLC0415

    if name not in METHODS:
        raise ConfigError(f"unknown adaptation method {name!r}; known: {', '.join(METHODS)}")
    return dict(METHODS[name])
