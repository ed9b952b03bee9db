"""jtl's train step against PyTorch eager on the same machine, in the same invocation.

    .venv/bin/python scripts/bench_train_step.py [--cases resnet18_64,...] [--repeats 7] [--steps 3]
    (figures and machine: docs/benchmarks.md, "Train step vs PyTorch")

Each case runs jtl's real compiled step (``make_loss_fn`` + ``make_train_step`` +
``jit_train_step``, SGD with momentum 0.9) and the same architecture, batch, image
size, dtype (float32) and optimizer in PyTorch (``scripts/torch_ref_models.py``), run
in worker processes in its fastest setting: NCHW or channels-last memory and all cores or
one thread, chosen per case by a short timing, under OpenMP wait policy ``passive``, and
the same with all cores under ``active`` (libgomp's default: on a loaded machine its
spinning made PyTorch's 2-thread step up to 5x slower, on a quiet one it can be faster).
Timing alternates: ``--repeats`` rounds of ``--steps`` jtl steps, then ``--steps`` steps of
each PyTorch worker, whose faster one counts for the round; each framework's per-step time
is the median over rounds, so a shared, noisy machine slows both alike. One JSON line per case::

    {"case", "jtl_img_s", "torch_img_s", "ratio" (jtl / torch), "torch_setting",
     "mfu" (model FLOPs per second / the f32 matmul peak measured in this run),
     "first_step_s" (trace + compile + first step, no cache), "first_step_cached_s"
     (the same from jax's persistent compilation cache), "peak_mib" (XLA's buffers for
     the step: arguments + outputs + temporaries - aliased), ...}

Cases: ``resnet18_64`` (batch 64), ``resnet18_128`` (32), ``resnet50_128`` (16),
``cifar8_32`` (the demo's ``cifar_resnet8``, 5 classes, 32 px, batch 128), ``dann_32``
(jtl's DANN adaptation step, ``jtl.train.adapt``: 128 source + 128 target images in one
forward pass of ``AdaptationModel`` with jtl's defaults, a 256-d bottleneck and a
1024-1024 discriminator behind gradient reversal; loss pieces ``ce`` + ``dann``).

GPU mode (``--device gpu``, case ``resnet50_224_bf16``: ResNet-50, 224 px, batch 256)::

    PYTHONUNBUFFERED=1 python3 scripts/bench_train_step.py --device gpu [--batch 256] [--profile DIR]

jtl's step with compute dtype bfloat16 (the trainer's ``compute_dtype="bfloat16"``: float32
parameters, BatchNorm statistics in float32 and updated) against PyTorch eager under
``torch.autocast(bfloat16)`` with channels-last memory and ``cudnn.benchmark`` (torchvision's
model when installed, else ``scripts/torch_ref_models.py``), same batch and SGD momentum, in a
worker process on the same GPU (both allocate on demand: ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
unless a memory fraction is set). Warm-up, then ``--repeats`` interleaved rounds of ``--steps``
steps each, ending in ``block_until_ready`` / ``torch.cuda.synchronize``; medians. MFU = model
FLOPs (3 x the plain forward's, XLA's cost analysis) per second / a bf16 ``--peak-n``^3 matmul
timed by jax in the same run. Memory: XLA's buffers for the step, the jax allocator's peak and
``torch.cuda.max_memory_allocated``. ``--profile DIR`` adds each framework's longest-running
device kernels (jax profiler's Perfetto trace, torch.profiler). Imports only ``jtl.models`` and
``jtl.train.steps``/``state`` (no ml_collections, grain or tfds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

CASES = {
    # name: (arch, num_classes, image size, batch, dann)
    "resnet18_64": ("resnet18", 1000, 64, 64, False),
    "resnet18_128": ("resnet18", 1000, 128, 32, False),
    "resnet50_128": ("resnet50", 1000, 128, 16, False),
    "cifar8_32": ("cifar_resnet8", 5, 32, 128, False),
    "dann_32": ("cifar_resnet8", 5, 32, 128, True),
}
BOTTLENECK, DISC_HIDDEN = 256, 1024  # jtl.config defaults (adapt.bottleneck_dim, adapt.disc_hidden)
LR = 0.01


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """XLA's f32 matmul throughput (FLOP/s), best of ``reps``."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- jtl ---------------------------------------------------------------------------------------
def build_jtl(arch, num_classes, size, batch, dann, seed=0, dtype=None):
    """jtl's step as the trainer builds it; ``dtype`` is the compute dtype (``ResNet.dtype``, the
    trainer's ``compute_dtype``: parameters and BatchNorm statistics stay float32)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jtl.models import create_model
    from jtl.train.state import TrainState
    from jtl.train.steps import jit_train_step, make_loss_fn, make_mesh, make_train_step, shard_batch

    x, y = make_data(arch, num_classes, size, batch, dann, seed)
    x0 = jnp.zeros((1, size, size, 3))
    if not dann:
        model = create_model(arch, num_classes, **({"dtype": dtype} if dtype is not None else {}))
        variables = jax.jit(model.init)(jax.random.key(seed), x0)

        def forward(variables, batch, train, rng=None):  # as jtl.train.tasks.ClassificationTask.forward
            (logits, feats), upd = model.apply(variables, batch["image"], train=True, return_features=True,
                                               mutable=["batch_stats"])
            return {"logits": logits, "features": feats}, upd["batch_stats"]

        loss_fn = make_loss_fn(forward, [("ce", 1.0)], {}, 1000)
        host_batch = {"image": x, "label": y}
    else:
        # jtl's adaptation step: AdaptationTask's forward over [x_s; x_t] and its loss pieces.
        from jtl.train.adapt import AdaptationModel, AdaptationTask  # needs jtl.data (tfds): CPU cases only

        model = AdaptationModel(arch, num_classes, BOTTLENECK, ("disc",), DISC_HIDDEN)
        variables = model.init(jax.random.key(seed), x0, BOTTLENECK, method=AdaptationModel.init_all)
        task = object.__new__(AdaptationTask)
        task.model, task.uses_target, task.strong = model, True, False
        task.normalization = None  # the bench's images are float, already normalised
        loss_fn = make_loss_fn(task.forward, [("ce", 1.0), ("dann", 1.0)], {}, 1000, r"^(?!backbone/)",
                               apply_head=task.apply_head)
        host_batch = {"image_s": x[:batch], "label": y, "image_t": x[batch:]}
    params = variables["params"]
    tx = optax.sgd(LR, momentum=0.9)
    mesh = make_mesh()
    step = jit_train_step(make_train_step(loss_fn, tx), mesh)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    return model, step, state, shard_batch(mesh, host_batch), x, y


def model_flops(model, size, rows, compile_: bool = True) -> float:
    """FLOPs of one train step of the *plain* formulation: 3 x the forward's convolutions and dense
    layers (XLA's cost analysis of the forward with ``lax.conv_general_dilated``; with
    ``compile_=False`` the analysis of the lowered, not yet optimised, program: no compilation)."""
    import jax
    import jax.numpy as jnp

    from jtl.models.resnet import ResNet

    with plain_convolutions():
        if not isinstance(model, ResNet):  # jtl.train.adapt.AdaptationModel
            from jtl.train.adapt import AdaptationModel  # backbone + bottleneck + classifier + discriminator
            init = lambda k, x: model.init(k, x, BOTTLENECK, method=AdaptationModel.init_all)  # noqa: E731

            def fwd(v, x):
                logits, feats = model.apply(v, x, train=False, return_features=True)
                d = model.apply(v, "disc", feats["pooled"], method=AdaptationModel.apply_head)
                return logits, d
        else:
            init, fwd = model.init, lambda v, x: model.apply(v, x, train=False)
        variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
        lowered = jax.jit(fwd).lower(variables, jax.ShapeDtypeStruct((rows, size, size, 3), jnp.float32))
        cost = (lowered.compile() if compile_ else lowered).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return 3.0 * float(cost["flops"])


@contextlib.contextmanager
def plain_convolutions():
    from jtl.models import layers, resnet

    saved = layers.conv2d, resnet.max_pool_3x3_s2
    layers.conv2d, resnet.max_pool_3x3_s2 = layers.conv2d_plain, layers.max_pool_3x3_s2_plain
    try:
        yield
    finally:
        layers.conv2d, resnet.max_pool_3x3_s2 = saved


def first_step_times(build, cache_dir: str):
    """(cold seconds, cached seconds, memory MiB) for trace + compile + one step."""
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
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes) / 2**20
    jax.config.update("jax_compilation_cache_dir", None)
    return times[0], times[1], peak


# --- torch -------------------------------------------------------------------------------------
def make_data(arch, num_classes, size, batch, dann, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    x = rng.standard_normal((2 * batch if dann else batch, size, size, 3), np.float32)
    return x, y


def build_torch(arch, num_classes, size, batch, dann, channels_last):
    import torch
    import torch.nn.functional as F
    from torch_ref_models import AdaptationModel, create_model

    x, y = make_data(arch, num_classes, size, batch, dann)
    torch.manual_seed(0)
    model = AdaptationModel(arch, num_classes, BOTTLENECK, DISC_HIDDEN) if dann else create_model(arch, num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(memory_format=fmt)
    yt = torch.from_numpy(y.astype(np.int64))
    state = [0]

    def step():
        opt.zero_grad(set_to_none=True)
        logits, pooled = model(xt)
        loss = F.cross_entropy(logits[:batch], yt)
        if dann:  # jtl's "dann" piece: reversal coefficient 2 / (1 + exp(-10 p)) - 1, p = step / 1000
            d = model.discriminate(pooled, 2.0 / (1.0 + math.exp(-10 * min(state[0], 1000) / 1000)) - 1.0)
            loss = loss + 0.5 * (F.softplus(-d[:batch]).mean() + F.softplus(d[batch:]).mean())
        state[0] += 1
        loss.backward()
        opt.step()
        return loss

    return step


def torch_worker():
    """``--torch-worker``: JSON commands on stdin, one JSON answer per line on stdout."""
    import torch

    step = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "build":
            torch.set_num_threads(cmd["threads"])
            step = build_torch(*CASES[cmd["case"]], cmd["channels_last"])
            t = _timed(step)
            ans = {"first_s": t}
        else:
            ans = {"seconds": _timed(lambda: [step() for _ in range(cmd["steps"])])}
        print(json.dumps(ans), flush=True)


class TorchWorker:
    """PyTorch in its own process, so that its OpenMP wait policy can be chosen: on a loaded
    machine libgomp's default (active spinning) made a 2-thread step 5x slower than 1 thread."""

    def __init__(self, wait_policy: str):
        env = dict(os.environ, OMP_WAIT_POLICY=wait_policy)
        self.proc = subprocess.Popen([sys.executable, __file__, "--torch-worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.wait_policy = wait_policy

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def torch_workers(name: str):
    """PyTorch workers for case ``name``: OpenMP wait policy ``passive`` in its fastest setting
    (memory format x threads, by a short timing: one warm-up and 2 steps each) and ``active``
    with the same memory format and all cores. Both are timed in every round and the faster
    counts, since which one wins changes with the machine's load."""
    threads = os.cpu_count() or 1
    passive = TorchWorker("passive")
    best = None
    for n in sorted({threads, 1}, reverse=True):
        for cl in (False, True):
            passive.call(cmd="build", case=name, threads=n, channels_last=cl)
            t = passive.call(cmd="run", steps=2)["seconds"]
            if best is None or t < best[0]:
                best = (t, n, cl)
    _, n, cl = best
    passive.call(cmd="build", case=name, threads=n, channels_last=cl)
    workers = {f"{'channels_last' if cl else 'nchw'}, {n} threads, OMP_WAIT_POLICY=passive": passive}
    if threads > 1:
        active = TorchWorker("active")
        active.call(cmd="build", case=name, threads=threads, channels_last=cl)
        workers[f"{'channels_last' if cl else 'nchw'}, {threads} threads, OMP_WAIT_POLICY=active"] = active
    return workers


# --- GPU: mixed precision --------------------------------------------------------------------------
GPU_CASES = {
    # name: (arch, num_classes, image size, batch); jtl compute_dtype bfloat16 (params float32)
    # against PyTorch eager under torch.autocast(bfloat16), channels-last.
    "resnet50_224_bf16": ("resnet50", 1000, 224, 256),
}


def import_jtl_steps():
    """``jtl.train.steps`` as the trainer imports it. If the package ``jtl.train`` fails to import
    (its ``__init__`` pulls in the trainer loop and orbax, whose versions on a lent machine may
    differ), the same modules are loaded without running ``jtl/train/__init__.py``; returns a note
    saying which happened."""
    try:
        import jtl.train.state  # noqa: F401
        import jtl.train.steps  # noqa: F401

        return "package"
    except ImportError as e:  # pragma: no cover - only on machines with other library versions
        import types

        for k in [k for k in sys.modules if k == "jtl.train" or k.startswith("jtl.train.")]:
            del sys.modules[k]
        pkg = types.ModuleType("jtl.train")
        pkg.__path__ = [str(ROOT / "jtl" / "train")]
        sys.modules["jtl.train"] = pkg
        import jtl.train.state  # noqa: F401
        import jtl.train.steps  # noqa: F401

        return f"modules only (import jtl.train failed: {e})"


def matmul_peak_bf16(n: int, reps: int = 5, inner: int = 10) -> float:
    """XLA's bf16 matmul throughput (FLOP/s, float32 accumulation) on random data: best of ``reps``
    rounds of ``inner`` back-to-back ``n x n x n`` products."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    f(a, b).block_until_ready()

    def rnd():
        outs = [f(a, b) for _ in range(inner)]
        jax.block_until_ready(outs)

    rnd()
    best = min(_timed(rnd) for _ in range(reps))
    return 2 * n**3 * inner / best


def _device_peak_bytes():
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU devices have none
        stats = {}
    return stats.get("peak_bytes_in_use")


def _top_kernels(events, steps, top=25):
    """[(name, ms per step, calls per step)] of the longest-running device events."""
    tot = {}
    for name, dur in events:
        t, c = tot.get(name, (0.0, 0))
        tot[name] = (t + dur, c + 1)
    rows = sorted(tot.items(), key=lambda kv: -kv[1][0])
    return [(name[:90], round(t / steps / 1e3, 3), round(c / steps, 1)) for name, (t, c) in rows[:top]]


def profile_jtl(compiled, state, batch, steps, log_dir):
    """Runs ``steps`` steps under ``jax.profiler`` and sums the device ops (GPU kernels, or XLA:CPU
    ops) of the Perfetto trace by name. Returns (state, total device ms per step, top list)."""
    import glob
    import gzip

    import jax

    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for _ in range(steps):
            state, m = compiled(state, batch)
        jax.block_until_ready(m)
    path = sorted(glob.glob(os.path.join(log_dir, "**", "*perfetto_trace.json.gz"), recursive=True))[-1]
    import shutil

    shutil.copy(path, os.path.join(log_dir, "jtl_perfetto_trace.json.gz"))  # near the top: $OUT keeps 2 levels
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    pnames = {e["pid"]: e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "process_name" and "args" in e}
    tnames = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name" and "args" in e}
    gpu_pids = {pid for pid, n in pnames.items() if "GPU" in n or "gpu" in n}
    per_thread = {}
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu_pids:
            k = f"{pnames[e['pid']]} / {tnames.get((e['pid'], e.get('tid')), e.get('tid'))}"
            per_thread[k] = per_thread.get(k, 0.0) + e.get("dur", 0.0) / steps / 1e3
    print("# jtl trace, device lines (ms per step):", json.dumps({k: round(v, 2) for k, v in per_thread.items()}))
    if gpu_pids:  # GPU kernels on the CUDA stream lines (not the derived "XLA Ops"/"XLA Modules" lines)
        streams = {k for k, n in tnames.items() if k[0] in gpu_pids and "stream" in str(n).lower()}
        sel = [(e["name"], e["dur"]) for e in events if e.get("ph") == "X" and e.get("pid") in gpu_pids
               and (not streams or (e["pid"], e.get("tid")) in streams)]
    else:  # CPU backend: XLA ops on the host threads (for testing the bench)
        sel = [(e["name"], e["dur"]) for e in events if e.get("ph") == "X" and "dur" in e
               and not e["name"].startswith(("$", "Thunk", "PjRt", "TfrtCpu"))]
    total = sum(d for _, d in sel) / steps / 1e3
    return state, round(total, 2), _top_kernels(sel, steps)


def build_torch_amp(arch, num_classes, size, batch, impl):
    """PyTorch eager, ``torch.autocast(bfloat16)``, channels-last, SGD momentum, cuDNN autotuning
    (``cudnn.benchmark``). ``impl``: "torchvision" (``torchvision.models.<arch>``), "ref"
    (``scripts/torch_ref_models.py``, the same architecture) or "auto" (torchvision if present)."""
    import torch
    import torch.nn.functional as F

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    x, y = make_data(arch, num_classes, size, batch, False)
    torch.manual_seed(0)
    model = None
    if impl in ("auto", "torchvision"):
        try:
            import torchvision

            model, impl = getattr(torchvision.models, arch)(num_classes=num_classes), "torchvision"
        except ImportError:
            if impl == "torchvision":
                raise
    if model is None:
        from torch_ref_models import create_model

        class Logits(torch.nn.Module):  # the reference returns (logits, pooled)
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, t):
                return self.m(t)[0]

        model, impl = Logits(create_model(arch, num_classes)), "ref"
    model.to(dev, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dev).contiguous(
        memory_format=torch.channels_last)
    yt = torch.from_numpy(y.astype(np.int64)).to(dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    info = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "impl": impl,
            "params": sum(p.numel() for p in model.parameters())}
    return step, sync, info


def torch_amp_worker():
    """``--torch-amp-worker``: the GPU case's PyTorch side, JSON commands on stdin."""
    import torch

    step = sync = None
    last = [None]
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "build":
            step, sync, ans = build_torch_amp(*cmd["args"])
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            last[0] = step()
            sync()
            ans["first_s"] = time.perf_counter() - t
        elif cmd["cmd"] == "run":
            sync()
            t = time.perf_counter()
            for _ in range(cmd["steps"]):
                last[0] = step()
            sync()
            ans = {"seconds": time.perf_counter() - t}
        elif cmd["cmd"] == "stats":
            ans = {"loss": last[0].item()}
            if torch.cuda.is_available():
                ans["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                ans["reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        elif cmd["cmd"] == "profile":  # device kernels (CUDA) or operators (CPU), by self time
            from torch.profiler import ProfilerActivity, profile

            cuda = torch.cuda.is_available()
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                for _ in range(cmd["steps"]):
                    step()
                sync()
            ev = []
            for e in prof.key_averages():
                if cuda and not str(e.device_type).endswith("CUDA"):
                    continue
                t = (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) if cuda \
                    else e.self_cpu_time_total
                ev += [(e.key, t / e.count)] * e.count
            ans = {"device_ms_per_step": round(sum(d for _, d in ev) / cmd["steps"] / 1e3, 2),
                   "top": _top_kernels(ev, cmd["steps"])}
        print(json.dumps(ans), flush=True)


def run_gpu_case(name, size, batch, repeats, steps, peak_n, impl, profile_dir=None, conv="jtl"):
    """jtl bf16 vs PyTorch AMP channels-last, interleaved rounds; see ``GPU_CASES``. Prints the
    case's JSON line, then (``profile_dir``) both frameworks' longest device ops.

    ``conv="plain"`` traces jtl's model with XLA's convolution for every layer and
    ``nn.max_pool`` (``plain_convolutions``) instead of jtl's CPU-tuned dispatch (1x1
    convolutions as dots, im2col on <= 2x2 maps, max pool gradient without select-and-scatter):
    an experiment, not what the trainer runs."""
    import jax
    import jax.numpy as jnp

    arch, num_classes, size0, batch0 = GPU_CASES[name]
    size, batch = size or size0, batch or batch0
    t = time.perf_counter()
    with plain_convolutions() if conv == "plain" else contextlib.nullcontext():
        model, jstep, state, jbatch, x, y = build_jtl(arch, num_classes, size, batch, False, dtype=jnp.bfloat16)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        compiled = jstep.lower(state, jbatch).compile()
        compile_s = time.perf_counter() - t
    state, m = compiled(state, jbatch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t  # trace + compile + first step (no compilation cache)
    mem = compiled.memory_analysis()
    xla_mib = None
    if mem is not None:
        xla_mib = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                   - mem.alias_size_in_bytes) / 2**20
    holder = [state]

    def jtl_steps(n):
        s = holder[0]
        for _ in range(n):
            s, mm = compiled(s, jbatch)
        jax.block_until_ready(mm)
        holder[0] = s
        return mm

    for _ in range(2):  # warm-up
        jtl_steps(steps)
    worker = subprocess.Popen([sys.executable, __file__, "--torch-amp-worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def call(**cmd):
        worker.stdin.write(json.dumps(cmd) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    tinfo = call(cmd="build", args=[arch, num_classes, size, batch, impl])
    for _ in range(2):  # warm-up (cuDNN autotuning happened in the first step)
        call(cmd="run", steps=steps)
    tj, tt = [], []
    for _ in range(repeats):  # interleaved
        tj.append(_timed(lambda: jtl_steps(steps)) / steps)
        tt.append(call(cmd="run", steps=steps)["seconds"] / steps)
    mm = jtl_steps(1)
    tstats = call(cmd="stats")
    bn1 = holder[0].batch_stats["bn1"]["mean"]
    flops = model_flops(model, size, batch, compile_=False)
    peak = matmul_peak_bf16(peak_n)
    mj, mt = float(np.median(tj)), float(np.median(tt))
    dev_peak = _device_peak_bytes()
    out = {
        "case": name, "arch": arch, "image_size": size, "batch": batch, "device": jax.devices()[0].device_kind,
        "jtl_img_s": round(batch / mj, 1), "torch_img_s": round(batch / mt, 1), "ratio": round(mt / mj, 3),
        "jtl_ms": round(mj * 1e3, 2), "torch_ms": round(mt * 1e3, 2),
        "jtl_ms_rounds": [round(v * 1e3, 2) for v in tj], "torch_ms_rounds": [round(v * 1e3, 2) for v in tt],
        "torch_setting": f"eager, autocast bf16, channels_last, cudnn.benchmark, {tinfo['impl']} {arch}",
        "jtl_conv": conv,
        "model_gflop_per_img": round(flops / batch / 1e9, 2), "mfu": round(flops / mj / peak, 3),
        "torch_mfu": round(flops / mt / peak, 3), "bf16_matmul_peak_tflop_s": round(peak / 1e12, 1),
        "matmul_n": peak_n, "jtl_first_step_s": round(first, 2), "jtl_compile_s": round(compile_s, 2),
        "jtl_build_s": round(build_s, 2), "torch_first_step_s": round(tinfo["first_s"], 2),
        "jtl_xla_peak_mib": round(xla_mib, 1) if xla_mib is not None else None,
        "jtl_device_peak_mib": round(dev_peak / 2**20, 1) if dev_peak else None,
        "torch_peak_mib": round(tstats["peak_mib"], 1) if "peak_mib" in tstats else None,
        "jtl_loss": round(float(mm["loss"]), 4), "torch_loss": round(tstats["loss"], 4),
        "bn_stats_moved": bool(jnp.any(bn1 != 0)), "steps_per_round": steps, "repeats": repeats,
        "torch_params": tinfo["params"],
        "jtl_params": int(sum(v.size for v in jax.tree.leaves(holder[0].params))),
    }
    print(json.dumps(out), flush=True)
    if profile_dir:
        try:
            pst = max(2, steps // 4)
            holder[0], total, jtop = profile_jtl(compiled, holder[0], jbatch, pst, profile_dir)
            tprof = call(cmd="profile", steps=pst)
            print(json.dumps({"case": name, "jtl_profile_ms_per_step": total,
                              "torch_profile_ms_per_step": tprof["device_ms_per_step"]}), flush=True)
            for who, top in (("jtl", jtop), ("torch", tprof["top"])):
                print(f"# {who}: top device ops, ms per step, calls per step")
                for row in top:
                    print(f"#   {row[1]:9.3f} {row[2]:6.1f}  {row[0]}")
        except Exception as e:  # noqa: BLE001 - the timings above are already out
            print(f"# profiling failed: {e!r}", flush=True)
    worker.stdin.close()
    worker.wait()
    return out


# --- main --------------------------------------------------------------------------------------
def run_case(name, repeats, steps, peak, cache_dir):
    import jax

    arch, num_classes, size, batch, dann = CASES[name]
    build = lambda: build_jtl(arch, num_classes, size, batch, dann)  # noqa: E731
    cold, cached, mem = first_step_times(build, cache_dir)
    model, jstep, state, jbatch, x, y = build()
    rows = x.shape[0]
    flops = model_flops(model, size, rows)
    holder = [state]

    def jtl_steps():
        s = holder[0]
        for _ in range(steps):
            s, m = jstep(s, jbatch)
        jax.block_until_ready(m)
        holder[0] = s

    workers = torch_workers(name)
    jtl_steps()
    tj, tt, wins = [], [], []
    for _ in range(repeats):  # interleaved: a change of load hits both frameworks
        tj.append(_timed(jtl_steps) / steps)
        per = {k: w.call(cmd="run", steps=steps)["seconds"] / steps for k, w in workers.items()}
        best = min(per, key=per.get)
        tt.append(per[best])
        wins.append(best)
    for w in workers.values():
        w.close()
    torch_setting = max(set(wins), key=wins.count)
    mj, mt = float(np.median(tj)), float(np.median(tt))
    return {
        "case": name, "arch": arch, "image_size": size, "batch": rows,
        "jtl_img_s": round(rows / mj, 1), "torch_img_s": round(rows / mt, 1), "ratio": round(mt / mj, 3),
        "jtl_ms": round(mj * 1e3, 1), "torch_ms": round(mt * 1e3, 1), "torch_setting": torch_setting,
        "model_gflop": round(flops / 1e9, 2), "mfu": round(flops / mj / peak, 3),
        "torch_mfu": round(flops / mt / peak, 3), "matmul_peak_gflop_s": round(peak / 1e9, 1),
        "first_step_s": round(cold, 2), "first_step_cached_s": round(cached, 2),
        "peak_mib": round(mem, 1) if mem is not None else None,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help=f"CPU: {','.join(CASES)} (default: all); "
                   f"GPU: {','.join(GPU_CASES)} (default with --device gpu)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: the mixed-precision cases (GPU_CASES) on jax's default backend")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: 7 CPU, 5 GPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: 3 CPU, 20 GPU)")
    p.add_argument("--batch", type=int, default=None, help="GPU cases: override the batch")
    p.add_argument("--image-size", type=int, default=None, help="GPU cases: override the image size")
    p.add_argument("--peak-n", type=int, default=8192, help="GPU cases: n of the bf16 n^3 matmul peak")
    p.add_argument("--torch-model", default="auto", choices=("auto", "torchvision", "ref"),
                   help="GPU cases: torchvision's model (auto: if installed) or scripts/torch_ref_models.py")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="GPU cases: also profile both frameworks and print the longest device ops")
    p.add_argument("--jtl-conv", default="jtl", choices=("jtl", "plain"),
                   help="GPU cases, experiment: 'plain' = XLA's convolution for every layer (see run_gpu_case)")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--torch-amp-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.torch_worker:
        return torch_worker()
    if a.torch_amp_worker:
        return torch_amp_worker()
    if a.device == "gpu":
        return main_gpu(a)
    import jax

    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "jax": jax.__version__, "torch": _torch_version(),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        for name in (a.cases or ",".join(CASES)).split(","):
            # The peak is re-measured next to each case: the machine's load changes between cases.
            print(json.dumps(run_case(name, a.repeats or 7, a.steps or 3, matmul_peak(), cache_dir)), flush=True)


def main_gpu(a):
    # jax would otherwise take 75% of the GPU's memory up front, and PyTorch runs in a second
    # process on the same GPU: both allocate on demand (each keeps its cache between rounds).
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    how = import_jtl_steps()
    import jax

    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                      "jax": jax.__version__, "torch": _torch_version(), "jtl_train_import": how,
                      "xla_flags": os.environ.get("XLA_FLAGS", ""),
                      "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}), flush=True)
    for name in (a.cases or ",".join(GPU_CASES)).split(","):
        run_gpu_case(name, a.image_size, a.batch, a.repeats or 5, a.steps or 20, a.peak_n, a.torch_model,
                     a.profile, a.jtl_conv)


def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                         text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    main()
