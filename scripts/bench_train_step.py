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
def build_jtl(arch, num_classes, size, batch, dann, seed=0):
    import jax
    import jax.numpy as jnp
    import optax

    from jtl.models import create_model
    from jtl.train.adapt import AdaptationModel, AdaptationTask
    from jtl.train.state import TrainState
    from jtl.train.steps import jit_train_step, make_loss_fn, make_mesh, make_train_step, shard_batch

    x, y = make_data(arch, num_classes, size, batch, dann, seed)
    x0 = jnp.zeros((1, size, size, 3))
    if not dann:
        model = create_model(arch, num_classes)
        variables = model.init(jax.random.key(seed), x0)

        def forward(variables, batch, train, rng=None):  # as jtl.train.tasks.ClassificationTask.forward
            (logits, feats), upd = model.apply(variables, batch["image"], train=True, return_features=True,
                                               mutable=["batch_stats"])
            return {"logits": logits, "features": feats}, upd["batch_stats"]

        loss_fn = make_loss_fn(forward, [("ce", 1.0)], {}, 1000)
        host_batch = {"image": x, "label": y}
    else:
        # jtl's adaptation step: AdaptationTask's forward over [x_s; x_t] and its loss pieces.
        model = AdaptationModel(arch, num_classes, BOTTLENECK, ("disc",), DISC_HIDDEN)
        variables = model.init(jax.random.key(seed), x0, BOTTLENECK, method=AdaptationModel.init_all)
        task = object.__new__(AdaptationTask)
        task.model, task.uses_target, task.strong = model, True, False
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


def model_flops(model, size, rows) -> float:
    """FLOPs of one train step of the *plain* formulation: 3 x the forward's convolutions and dense
    layers (XLA's cost analysis of the forward with ``lax.conv_general_dilated``)."""
    import jax
    import jax.numpy as jnp

    from jtl.models import layers

    from jtl.train.adapt import AdaptationModel

    with plain_convolutions():
        if isinstance(model, AdaptationModel):  # backbone + bottleneck + classifier + discriminator
            init = lambda k, x: model.init(k, x, BOTTLENECK, method=AdaptationModel.init_all)  # noqa: E731

            def fwd(v, x):
                logits, feats = model.apply(v, x, train=False, return_features=True)
                d = model.apply(v, "disc", feats["pooled"], method=AdaptationModel.apply_head)
                return logits, d
        else:
            init, fwd = model.init, lambda v, x: model.apply(v, x, train=False)
        variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
        f = jax.jit(fwd)
        cost = f.lower(variables, jax.ShapeDtypeStruct((rows, size, size, 3), jnp.float32)).compile().cost_analysis()
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
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.torch_worker:
        return torch_worker()
    import jax

    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "jax": jax.__version__, "torch": _torch_version(),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        for name in a.cases.split(","):
            # The peak is re-measured next to each case: the machine's load changes between cases.
            print(json.dumps(run_case(name, a.repeats, a.steps, matmul_peak(), cache_dir)), flush=True)


def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                         text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    main()
