"""Ported torchvision weights give torchvision's outputs (reference: real torchvision in a subprocess)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err, run_torch_reference
from jtl.models import create_model
from jtl.weights import port_torchvision

# resnet101/152 differ from resnet50 only in depth: in `make test-slow`, to keep `make test` within its time.
ARCHS = ["resnet18", "resnet34", "resnet50", pytest.param("resnet101", marks=pytest.mark.slow),
         pytest.param("resnet152", marks=pytest.mark.slow)]
SIZES = [224, 64]


@pytest.fixture(scope="module", params=ARCHS)
def reference(request, tmp_path_factory, torchvision_python):
    arch = request.param
    pth, ref = run_torch_reference(tmp_path_factory.mktemp(arch), arch, sizes=",".join(map(str, SIZES)))
    return arch, port_torchvision(pth, arch), ref


def _stats(ref, prefix):
    return {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(prefix + "/")}


def _flat_stats(batch_stats, arch):
    """jtl batch_stats -> {torch key: array}."""
    from flax import traverse_util

    from jtl.weights import torch_key

    flat = traverse_util.flatten_dict(batch_stats)
    return {torch_key("batch_stats", k, arch): np.asarray(v) for k, v in flat.items()}


@pytest.mark.parametrize("size", SIZES)
def test_eval_logits_match_torchvision(reference, size):
    arch, variables, ref = reference
    logits = create_model(arch, 1000).apply(variables, ref[f"x{size}"], train=False)
    assert logits.shape == ref[f"eval{size}"].shape
    assert rel_err(logits, ref[f"eval{size}"]) <= 1e-4


@pytest.mark.parametrize("size", SIZES)
def test_train_mode_outputs_and_running_stats_match_in_float64(reference, size):
    """Exact semantics (batch statistics, unbiased running variance, momentum 0.1) in float64."""
    arch, variables, ref = reference
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        x = jnp.asarray(ref[f"x{size}"], jnp.float64)
        out, new = create_model(arch, 1000, dtype=jnp.float64).apply(v64, x, train=True, mutable=["batch_stats"])
        assert out.dtype == jnp.float64
        assert rel_err(out, ref[f"train64_{size}"]) <= 1e-9
        got, want = _flat_stats(new["batch_stats"], arch), _stats(ref, f"stats64_{size}")
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_train_mode_float32_matches(reference):
    """float32 train mode at 224 px. Batch statistics over few elements amplify rounding
    through deep nets (float64 above is the exactness check), hence the looser bound."""
    arch, variables, ref = reference
    out, new = create_model(arch, 1000).apply(variables, ref["x224"], train=True, mutable=["batch_stats"])
    assert rel_err(out, ref["train224"]) <= 2e-3
    got, want = _flat_stats(new["batch_stats"], arch), _stats(ref, "stats224")
    assert got.keys() == want.keys()
    worst = max(rel_err(got[k], want[k]) for k in want)
    assert worst <= 2e-3
