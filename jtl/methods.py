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


# Source-free adaptation (adapt.source_free: the source run's model and unlabelled target data
# only; jtl.train.source_free). Kept apart from METHODS: they read no source data. Both keep the
# classifier fixed (freeze: "^head/", the source hypothesis).
SOURCE_FREE: dict[str, dict[str, float]] = {
    "shot": {"im": 1.0, "shot": 0.3},  # Liang et al. 2020: information maximisation + beta = 0.3 pseudo-labels
    "nrc": {"nrc": 1.0, "diversity": 1.0},  # Yang et al. 2021: neighbourhood clustering + diversity
}


def method(name: str) -> dict[str, float]:
    from jtl.errors import ConfigError  # noqa: PLC0415

    if name not in METHODS:
        raise ConfigError(f"unknown adaptation method {name!r}; known: {', '.join(METHODS)}")
    return dict(METHODS[name])


# Domain generalization (jtl.dg, runs with dg.domains): DomainBed's algorithms (Gulrajani &
# Lopez-Paz 2021) with its default hyperparameters, each as loss pieces, their options, and
# the config keys it switches on. Kept apart from METHODS: they need several source domains.
DG_METHODS: dict[str, dict] = {
    "erm": {"loss": {"ce": 1.0}},  # Vapnik 1998
    "irm": {"loss": {"ce": 1.0, "irm": 1.0},  # Arjovsky et al. 2019; weight 1 until anneal_steps
            "options": {"irm": {"weight": 100.0, "anneal_steps": 500}}},
    "vrex": {"loss": {"ce": 1.0, "vrex": 1.0},  # Krueger et al. 2021; weight 1 until anneal_steps
             "options": {"vrex": {"weight": 10.0, "anneal_steps": 500}}},
    "groupdro": {"loss": {"groupdro": 1.0}, "options": {"groupdro": {"eta": 0.01}}},  # Sagawa et al. 2020
    "coral": {"loss": {"ce": 1.0, "coral_domains": 1.0}},  # Sun & Saenko 2016, mean over domain pairs
    "mmd": {"loss": {"ce": 1.0, "mmd_domains": 1.0}},  # Li et al. 2018, mean over domain pairs
    "mixstyle": {"loss": {"ce": 1.0}, "config": {"dg.mixstyle": ("layer1", "layer2")}},  # Zhou et al. 2021
    "swad": {"loss": {"ce": 1.0}, "config": {"dg.swad": True, "save_predictions": True}},  # Cha et al. 2021
}


def dg_method(name: str) -> dict:
    """``{"loss", "options", "config"}`` of domain-generalization algorithm ``name``."""
    from jtl.errors import ConfigError  # noqa: PLC0415

    if name not in DG_METHODS:
        raise ConfigError(f"unknown domain-generalization algorithm {name!r}; known: {', '.join(DG_METHODS)}")
    m = DG_METHODS[name]
    return {"loss": dict(m["loss"]), "options": dict(m.get("options", {})), "config": dict(m.get("config", {}))}
