"""The fast formulations in jtl.models.layers against the plain XLA ones, and the benchmark
library jtl.bench: its PyTorch reference models against jtl's architectures, its DANN step,
its convolution recording and its grouping of compiled operations.

``conv2d`` (1x1 kernels as a matrix product, im2col on maps of <= 2x2 outputs, the weight
gradient tap by tap for inputs of few channels, XLA's convolution elsewhere) and ``max_pool_3x3_s2`` (custom gradient) must agree with
``conv2d_plain`` / ``max_pool_3x3_s2_plain`` within 1e-5 relative, forward and gradients.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.models import create_model
from jtl.models import layers as L

RTOL = 1e-5

# (kernel, stride, padding, input size): every convolution ResNet-18/50 and the CIFAR ResNets
# use (stem 7x7/2 p3, 3x3/1 p1, 3x3/2 p1, 1x1/1, 1x1/2), on large, 4x4, 2x2 and 1x1 maps, with
# odd sizes too.
CONV_CASES = [
    (7, 2, 3, 16), (7, 2, 3, 9), (7, 2, 3, 2),
    (3, 1, 1, 8), (3, 1, 1, 4), (3, 1, 1, 2), (3, 1, 1, 1), (3, 1, 1, 3),
    (3, 2, 1, 8), (3, 2, 1, 4), (3, 2, 1, 3), (3, 2, 1, 2), (3, 2, 1, 1),
    (1, 1, 0, 4), (1, 1, 0, 1), (1, 2, 0, 8), (1, 2, 0, 4), (1, 2, 0, 3), (1, 2, 0, 2), (1, 2, 0, 1),
]


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("k,stride,pad,size", CONV_CASES)
def test_conv2d_matches_plain_forward_and_gradients(k, stride, pad, size):
    kx, kw, kg = jax.random.split(jax.random.key(k * 100 + stride * 10 + size), 3)
    c, o, n = 6, 5, 3
    x = jax.random.normal(kx, (n, size, size, c))
    w = jax.random.normal(kw, (k, k, c, o))
    y_ref, vjp_ref = jax.vjp(lambda x, w: L.conv2d_plain(x, w, stride, pad), x, w)
    y, vjp = jax.vjp(jax.jit(lambda x, w: L.conv2d(x, w, stride, pad)), x, w)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < RTOL
    g = jax.random.normal(kg, y.shape)
    for got, want in zip(vjp(g), vjp_ref(g)):
        assert _rel(got, want) < RTOL


def test_small_maps_take_the_im2col_path():
    # the formulation choice itself: 2x2 and 1x1 outputs go through a dot, not a convolution
    x, w = jnp.ones((2, 2, 2, 4)), jnp.ones((3, 3, 4, 8))
    hlo = jax.jit(lambda x, w: L.conv2d(x, w, 1, 1)).lower(x, w).as_text()
    assert "convolution" not in hlo and "dot_general" in hlo
    hlo = jax.jit(lambda x, w: L.conv2d(x, w, 1, 1)).lower(jnp.ones((2, 8, 8, 4)), w).as_text()
    assert "convolution" in hlo


def test_few_input_channels_take_the_tap_by_tap_weight_gradient():
    # below FEW_INPUT_CHANNELS the weight gradient is dot products, above it XLA's convolution
    def grad_hlo(c):
        x, w = jnp.ones((2, 8, 8, c)), jnp.ones((3, 3, c, 8))
        return jax.jit(jax.grad(lambda w: jnp.sum(L.conv2d(x, w, 1, 1)))).lower(w).as_text()

    assert "dot_general" in grad_hlo(L.FEW_INPUT_CHANNELS - 1)
    assert "dot_general" not in grad_hlo(L.FEW_INPUT_CHANNELS)


@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (3, 8, 8, 4), (2, 2, 2, 3), (1, 1, 1, 2), (2, 5, 7, 3)])
@pytest.mark.parametrize("relu", [False, True])
def test_max_pool_matches_plain_forward_and_gradients(shape, relu):
    x = jax.random.normal(jax.random.key(sum(shape)), shape)
    if relu:  # ties (zeros), as after the stem's ReLU: the gradient goes to the first maximum
        x = jax.nn.relu(x)
    y_ref, vjp_ref = jax.vjp(L.max_pool_3x3_s2_plain, x)
    y, vjp = jax.vjp(jax.jit(L.max_pool_3x3_s2), x)
    np.testing.assert_array_equal(y, y_ref)
    g = jax.random.normal(jax.random.key(1), y.shape)
    assert _rel(vjp(g)[0], vjp_ref(g)[0]) < RTOL


def test_max_pool_exact_ties_single_winner():
    # an all-equal window: exactly one input receives the gradient, the first in row-major order
    x = jnp.zeros((1, 3, 3, 1))
    (dx,) = jax.vjp(L.max_pool_3x3_s2, x)[1](jnp.ones((1, 2, 2, 1)))
    (dx_ref,) = jax.vjp(L.max_pool_3x3_s2_plain, x)[1](jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dx, dx_ref)
    assert float(dx.sum()) == 4.0


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("cifar_resnet8", 32)])
def test_model_train_step_gradients_match_plain(name, size, monkeypatch):
    """Whole model: loss and parameter gradients with the fast formulations vs the plain ones."""
    from jtl.models import resnet

    model = create_model(name, 10)
    x = jax.random.normal(jax.random.key(0), (4, size, size, 3))
    variables = model.init(jax.random.key(1), x)

    def loss(params):
        logits, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                  mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), upd

    (l_fast, s_fast), g_fast = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    monkeypatch.setattr(L, "conv2d", L.conv2d_plain)
    monkeypatch.setattr(resnet, "max_pool_3x3_s2", L.max_pool_3x3_s2_plain)
    (l_ref, s_ref), g_ref = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert _rel(l_fast, l_ref) < RTOL
    for got, want in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        # gradients of whole networks: compare against the largest entry of each tensor
        assert _rel(got, want) < 1e-4
    for got, want in zip(jax.tree.leaves(s_fast), jax.tree.leaves(s_ref)):
        assert _rel(got, want) < RTOL


def _torch_ref_models():
    pytest.importorskip("torch")
    from jtl.bench import torch_models

    return torch_models


def _count(tree) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,classes,size", [("resnet18", 1000, 64), ("resnet50", 1000, 64),
                                               ("cifar_resnet8", 5, 32)])
def test_torch_reference_models_have_jtl_parameter_counts(name, classes, size):
    tm = _torch_ref_models()
    model = create_model(name, classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    ref = tm.create_model(name, classes)
    assert tm.num_params(ref) == _count(shapes["params"])
    # running statistics: torch keeps mean and var per BatchNorm channel (plus a counter)
    n_stats = sum(b.numel() for n, b in ref.named_buffers() if not n.endswith("num_batches_tracked"))
    assert n_stats == _count(shapes["batch_stats"])
    # same layer shapes in the same order (torch OIHW vs jtl HWIO)
    t_shapes = sorted(tuple(sorted(p.shape)) for p in ref.parameters())
    j_shapes = sorted(tuple(sorted(v.shape)) for v in jax.tree.leaves(shapes["params"]))
    assert t_shapes == j_shapes


@pytest.mark.parametrize("case,count", [("vit_s16_224", 22_050_664), ("convnext_t_224", 28_589_128)])
def test_torch_reference_vit_convnext_match_jtl(case, count):
    """The 224 px ViT-S/16 and ConvNeXt-T cases: the PyTorch references (built on the meta
    device: shapes only) have exactly the parameters of the ``TransferModel`` jtl's bench steps
    (backbone + ``head``), layer by layer (sorted shapes; torch OIHW / (out, in) vs jtl HWIO / (in, out))."""
    tm = _torch_ref_models()
    import torch

    from jtl.bench.cases import CASES
    from jtl.models.transfer import TransferModel

    c = CASES[case]
    shapes = jax.eval_shape(TransferModel(c.arch, c.num_classes).init, jax.random.key(0),
                            jnp.zeros((1, c.size, c.size, 3)))
    assert set(shapes["params"]) == {"backbone", "head"} and not shapes.get("batch_stats")
    with torch.device("meta"):
        ref = tm.create_model(c.arch, c.num_classes)
    assert tm.num_params(ref) == _count(shapes["params"]) == count
    assert not list(ref.buffers())
    t_shapes = sorted(tuple(sorted(p.shape)) for p in ref.parameters())
    j_shapes = sorted(tuple(sorted(v.shape)) for v in jax.tree.leaves(shapes["params"]))
    assert t_shapes == j_shapes


def test_torch_reference_vit_convnext_run():
    """The reference ViT and ConvNeXt on real (small) inputs: ``(logits, pooled)``, the logits the
    head of the pooled feature (ViT's normed class token; ConvNeXt's normed average pool)."""
    pytest.importorskip("torch")
    import torch

    from jtl.bench.torch_vit_convnext import ConvNeXt, VisionTransformer

    torch.manual_seed(0)
    for model in (VisionTransformer(embed_dim=32, depth=2, num_heads=2, num_classes=5, img_size=32),
                  ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 16, 32), num_classes=5)):
        logits, pooled = model.eval()(torch.randn(2, 3, 32, 32))
        assert logits.shape == (2, 5) and pooled.shape == (2, model.num_features)
        torch.testing.assert_close(logits, model.head(pooled))
        torch.testing.assert_close(pooled.mean(-1), torch.zeros(2), atol=1e-5, rtol=0)  # LayerNorm'd, bias 0


def test_torch_reference_adaptation_model_parameter_count():
    tm = _torch_ref_models()
    from jtl.bench.cases import BOTTLENECK, CASES, DISC_HIDDEN
    from jtl.bench.jtl_step import dann_model
    from jtl.models.transfer import TransferModel

    case = CASES["dann_32"]
    model = dann_model(case)
    assert (model.bottleneck_dim, model.disc_hidden) == (BOTTLENECK, DISC_HIDDEN) == (256, 1024)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), method=TransferModel.init_all),
                            jax.random.key(0))
    ref = tm.AdaptationModel(case.arch, case.num_classes, BOTTLENECK, DISC_HIDDEN)
    assert tm.num_params(ref) == _count(shapes["params"])


def test_bench_dann_step_loss_is_ce_plus_dann():
    """The bench's DANN case runs jtl's adaptation step: its first loss equals source
    cross-entropy + 1/2[BCE(D(f_s),1) + BCE(D(f_t),0)], computed in numpy from the model's outputs."""
    from jtl.bench.cases import Case
    from jtl.bench.jtl_step import build_jtl
    from jtl.models.transfer import TransferModel

    batch = 4
    model, step, state, dev_batch, x, y = build_jtl(Case("cifar_resnet8", 5, 32, batch, True))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    (logits, feats), _ = model.apply(variables, jnp.asarray(x), train=True, return_features=True,
                                     mutable=["batch_stats"])
    d = np.asarray(model.apply(variables, "disc", feats["pooled"], method=TransferModel.apply_head),
                   np.float64)[:, 0]
    z = np.asarray(logits, np.float64)[:batch]
    ce = np.mean(np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1)) + z.max(1) - z[np.arange(batch), y])
    softplus = lambda v: np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0)  # noqa: E731
    bce = 0.5 * (np.mean(softplus(-d[:batch])) + np.mean(softplus(d[batch:])))
    new_state, metrics = step(state, dev_batch)
    assert float(metrics["loss"]) == pytest.approx(ce + bce, rel=1e-5)
    assert int(new_state.step) == 1


@pytest.mark.parametrize("arch,size", [("cifar_resnet8", 32), ("resnet18", 64)])
def test_bench_conv_layers_records_every_convolution(arch, size):
    """jtl.bench.conv_layers (scripts/bench_conv_layers.py) times each convolution of the model once
    per layer: the layers it records are exactly the model's 4-D (HWIO) kernels, with their shapes."""
    from jtl.bench.conv_layers import conv_layers

    seen = conv_layers(arch, size, 2)
    shapes = jax.eval_shape(create_model(arch, 10).init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    kernels = sorted(tuple(v.shape) for v in jax.tree.leaves(shapes["params"]) if v.ndim == 4)
    recorded = sorted(k for (_, k, _, _), n in seen.items() for _ in range(n))
    assert recorded == kernels
    assert all(x[0] == 2 for (x, _, _, _) in seen)


def test_profile_train_step_groups_operations_by_what_they_compute():
    """jtl.bench.trace's grouping of a compiled program's operations (scripts/profile_train_step.py)."""
    from jtl.bench.trace import classify

    def f(x, k, m):
        y = L.conv2d_plain(x, k, 1, 1)
        return y, jnp.sum(x, axis=(1, 2)) @ m, jnp.transpose(x, (3, 1, 2, 0)) * 2.0

    args = (jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 5)), jnp.ones((4, 6)))
    groups = classify(jax.jit(f).lower(*args).compile().as_text())
    assert {"convolution", "dot", "transpose"} <= set(groups.values())


def test_bench_rounds_interleave_in_order():
    """jtl.bench.timing.rounds calls every function once per round, in order, and keeps what each measured."""
    from jtl.bench.timing import rounds

    calls = []
    out = rounds({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert calls == ["a", "b"] * 3
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3}


def test_torch_worker_runs_the_reference_dann_step():
    """The PyTorch side runs in a worker process (``python -m jtl.bench.torch_step``)."""
    pytest.importorskip("torch")
    from jtl.bench.cases import Case
    from jtl.bench.torch_step import TorchWorker

    worker = TorchWorker(OMP_WAIT_POLICY="passive")
    try:
        built = worker.call(cmd="build", case=list(Case("cifar_resnet8", 5, 8, 2, True)), threads=1,
                            channels_last=True)
        assert built["first_s"] > 0 and worker.run(2) > 0
        assert np.isfinite(worker.call(cmd="stats")["loss"])
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="an idle OpenMP thread spins only beside another")
def test_active_torch_worker_stops_spinning_after_its_steps():
    """The 'active' PyTorch worker must not keep a core busy while the other side is timed: in
    the second after its steps it uses under 0.2 CPU-seconds, where libgomp's own default for
    OMP_WAIT_POLICY=active (no GOMP_SPINCOUNT) uses about a whole core (the reference)."""
    pytest.importorskip("torch")
    import time

    from jtl.bench.cases import Case
    from jtl.bench.torch_step import ACTIVE_SPINCOUNT, TorchWorker

    def idle_cpu(**env):
        worker = TorchWorker(OMP_WAIT_POLICY="active", **env)
        try:
            worker.call(cmd="build", case=list(Case("cifar_resnet8", 16, 32, 2, True)), threads=2, channels_last=True)
            worker.run(2)
            time.sleep(0.1)  # the spin budget's own 30 ms
            t0 = _cpu_seconds(worker.proc.pid)
            time.sleep(1.0)
            return _cpu_seconds(worker.proc.pid) - t0
        finally:
            worker.close()

    assert idle_cpu(GOMP_SPINCOUNT=ACTIVE_SPINCOUNT) < 0.2
    assert idle_cpu() > 0.5
