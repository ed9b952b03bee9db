"""Pretrained weights: torchvision/timm porting, the registry of official files, new heads."""

from jtl.weights.port import port_state_dict, port_timm, port_torchvision, read_state_dict, torch_key
from jtl.weights.pretrained import (
    LoadReport,
    create_pretrained,
    load_weights,
    merge_pretrained,
    read_ported,
    save_ported,
)
from jtl.weights.registry import REGISTRY, WeightSpec, cache_dir, fetch, get_spec

__all__ = [
    "REGISTRY",
    "LoadReport",
    "WeightSpec",
    "cache_dir",
    "create_pretrained",
    "fetch",
    "get_spec",
    "load_weights",
    "merge_pretrained",
    "port_state_dict",
    "port_timm",
    "port_torchvision",
    "read_ported",
    "read_state_dict",
    "save_ported",
    "torch_key",
]
