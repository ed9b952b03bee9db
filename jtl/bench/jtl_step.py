"""jtl's side of a benchmark case: the trainer's compiled step, its FLOPs, its first step.

The step is the one the trainer runs (``make_loss_fn`` + ``make_train_step`` + ``jit_train_step``
of :mod:`jtl.train.steps`, a replicated :class:`~jtl.train.state.TrainState`), with plain SGD
(momentum 0.9, no weight decay or schedule) as in the PyTorch reference. jax, flax and
``jtl.train`` are imported inside the functions (see :mod:`jtl.bench`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NamedTuple

import numpy as np

from jtl.bench.cases import BOTTLENECK, DANN_LOSS, DISC_HIDDEN, LR, TOTAL_STEPS, Case, make_data
from jtl.bench.timing import xla_peak_mib


class JtlStep(NamedTuple):
    model: Any  # the trainer's TransferModel (with a bottleneck and a discriminator for a DANN case)
    step: Any  # the jitted step(state, batch) -> (state, metrics)
    state: Any  # TrainState, replicated over the mesh
    batch: dict  # the step's batch, sharded along ``data``
    x: np.ndarray  # the host images (source then target for DANN)
    y: np.ndarray  # the host labels


def dann_model(case: Case):
    """The DANN case's ``TransferModel``, built by the trainer's own builder
    (``jtl.train.adapt.build_model``) from a config resolved as a run's is: a ``BOTTLENECK``-d
    bottleneck and the discriminator the ``dann`` piece declares (``DISC_HIDDEN`` wide), float32."""
    from jtl.config import resolve
    from jtl.train.adapt import build_model

    cfg = resolve({"model": {"name": case.arch, "num_classes": case.num_classes},
                   "adapt": {"bottleneck_dim": BOTTLENECK, "disc_hidden": DISC_HIDDEN}, "loss": DANN_LOSS})
    return build_model(cfg)


def build_jtl(case: Case, seed: int = 0, dtype=None) -> JtlStep:
    """jtl's step for ``case`` as the trainer builds it; ``dtype`` is the compute dtype
    (``ResNet.dtype``, the trainer's ``compute_dtype``: parameters and BatchNorm statistics stay
    float32). The forward passes are the trainer's own, built without data
    (``classification_forward``; ``adaptation_forward`` over ``[x_s; x_t]`` with the pieces
    ``ce`` + ``dann`` and the heads and views they declare)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jtl.models.transfer import TransferModel, initial_variables
    from jtl.train.state import TrainState
    from jtl.train.steps import jit_train_step, make_loss_fn, make_mesh, make_train_step, shard_batch
    from jtl.train.forward import classification_forward

    x, y = make_data(case, seed)
    x0 = jnp.zeros((1, case.size, case.size, 3))
    if not case.dann:
        model = TransferModel(case.arch, case.num_classes, **({"dtype": dtype} if dtype is not None else {}))
        variables = initial_variables(model, jax.random.key(seed), x0, as_family=True)  # as the trainer draws it
        forward = classification_forward(model, None)  # the trainer's forward; images already normalised
        loss_fn = make_loss_fn(forward, [("ce", 1.0)], {}, TOTAL_STEPS)
        host_batch = {"image": x, "label": y}
    else:
        from jtl.train.adapt import adaptation_forward, apply_head
        from jtl.train.pieces import declared_views, get_piece

        model = dann_model(case)
        variables = initial_variables(model, jax.random.key(seed), x0)
        names = [n for n, _ in DANN_LOSS]
        forward = adaptation_forward(model, None, declared_views(names), any(get_piece(n).needs_target for n in names))
        loss_fn = make_loss_fn(forward, DANN_LOSS, {}, TOTAL_STEPS, r"^(?!backbone/)",
                               apply_head=lambda params, name, x, rng=None: apply_head(model, params, name, x, rng))
        host_batch = {"image_s": x[:case.batch], "label": y, "image_t": x[case.batch:]}
    params = variables["params"]
    tx = optax.sgd(LR, momentum=0.9)
    mesh = make_mesh()
    step = jit_train_step(make_train_step(loss_fn, tx), mesh)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    return JtlStep(model, step, state, shard_batch(mesh, host_batch), x, y)


@contextlib.contextmanager
def plain_convolutions():
    """XLA's convolution for every layer and ``nn.max_pool`` while tracing, instead of jtl's
    CPU-tuned dispatch (``conv2d_plain`` / ``max_pool_3x3_s2_plain``)."""
    from jtl.models import layers, resnet

    saved = layers.conv2d, resnet.max_pool_3x3_s2
    layers.conv2d, resnet.max_pool_3x3_s2 = layers.conv2d_plain, layers.max_pool_3x3_s2_plain
    try:
        yield
    finally:
        layers.conv2d, resnet.max_pool_3x3_s2 = saved


@contextlib.contextmanager
def attention_impl(impl: str):
    """While tracing, transformer attention (``jtl.models.attention.attend``) by ``impl``: "jtl"
    (unchanged: cuDNN's fused kernel for bf16 on an NVIDIA GPU, else the einsums), "einsum" (the
    materialised formulation everywhere), or ``attend_fused`` with ``jax.nn.dot_product_attention``'s
    ``implementation`` "xla" or "cudnn". An experiment."""
    from jtl.models import attention

    saved = attention.attend
    if impl == "einsum":
        attention.attend = attention.attend_einsum
    elif impl != "jtl":
        attention.attend = lambda q, k, v: attention.attend_fused(q, k, v, impl)
    try:
        yield
    finally:
        attention.attend = saved


def model_flops(model, size: int, rows: int, compile_: bool = True) -> float:
    """FLOPs of one train step of the *plain* formulation: 3 x the forward's convolutions and dense
    layers (XLA's cost analysis of the forward with ``lax.conv_general_dilated``; with
    ``compile_=False`` the analysis of the lowered, not yet optimised, program: no compilation)."""
    import jax
    import jax.numpy as jnp

    from jtl.models.transfer import TransferModel

    with plain_convolutions(), attention_impl("einsum"):  # the plain formulation, traceable for the CPU
        if model.heads:  # backbone + bottleneck + classifier + discriminator
            init = lambda k, x: model.init(k, x, method=TransferModel.init_all)  # noqa: E731

            def fwd(v, x):
                logits, feats = model.apply(v, x, train=False, return_features=True)
                d = model.apply(v, "disc", feats["pooled"], method=TransferModel.apply_head)
                return logits, d
        else:
            init, fwd = model.init, lambda v, x: model.apply(v, x, train=False)
        variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
        # Lowered for the CPU even on a GPU: XLA:GPU's analysis counts no FLOPs in library calls
        # (cuDNN convolutions, cuBLAS products), which left a GPU MFU 100x too low (jax 0.11.2).
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        lowered = jax.jit(fwd).lower(variables, jax.ShapeDtypeStruct((rows, size, size, 3), jnp.float32, sharding=cpu))
        cost = (lowered.compile() if compile_ else lowered).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if not cost and not compile_:  # jax 0.11 analyses only compiled programs
            cost = lowered.compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return 3.0 * float(cost["flops"])


def first_step_times(build, cache_dir: str) -> tuple[float, float, float | None]:
    """(cold seconds, cached seconds, XLA's buffers in MiB) for trace + compile + one step of the
    :class:`JtlStep` that ``build()`` returns, without and then from jax's persistent compilation
    cache in ``cache_dir``."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    times = []
    for _ in range(2):
        jax.clear_caches()
        _, step, state, batch, _, _ = build()
        t = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    peak = xla_peak_mib(compiled)
    jax.config.update("jax_compilation_cache_dir", None)
    return times[0], times[1], peak

