"""PyTorch's side of a benchmark case: the reference train step, and worker processes that run it.

PyTorch runs in its own process (``python -m jtl.bench.torch_step``: JSON commands on stdin,
one JSON answer per line on stdout) so that its OpenMP wait policy can be chosen: on a loaded
machine libgomp's default (active spinning) made a 2-thread step 5x slower than 1 thread; and
on a GPU so that each framework has its own allocator. torch is imported only inside the
functions that run PyTorch (it is a dev extra).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jtl.bench.cases import BOTTLENECK, DISC_HIDDEN, LR, TOTAL_STEPS, Case, make_data


def _tensors(case: Case, fmt, dev: str = "cpu"):
    """The case's images (NCHW, memory format ``fmt``) and int64 labels, on ``dev``."""
    import torch

    x, y = make_data(case)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dev).contiguous(memory_format=fmt)
    return xt, torch.from_numpy(y.astype(np.int64)).to(dev)


def build_torch(case: Case, channels_last: bool):
    """PyTorch eager's float32 train step for ``case`` (SGD momentum 0.9): ``step() -> loss``.
    A DANN case adds jtl's ``dann`` piece: the discriminator behind gradient reversal, coefficient
    ``2 / (1 + exp(-10 p)) - 1`` with ``p = step / TOTAL_STEPS``."""
    import torch
    import torch.nn.functional as F

    from jtl.bench.torch_models import AdaptationModel, create_model

    torch.manual_seed(0)
    if case.dann:
        model = AdaptationModel(case.arch, case.num_classes, BOTTLENECK, DISC_HIDDEN)
    else:
        model = create_model(case.arch, case.num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    xt, yt = _tensors(case, fmt)
    batch, state = case.batch, [0]

    def step():
        opt.zero_grad(set_to_none=True)
        logits, pooled = model(xt)
        loss = F.cross_entropy(logits[:batch], yt)
        if case.dann:
            p = min(state[0], TOTAL_STEPS) / TOTAL_STEPS
            d = model.discriminate(pooled, 2.0 / (1.0 + math.exp(-10 * p)) - 1.0)
            loss = loss + 0.5 * (F.softplus(-d[:batch]).mean() + F.softplus(d[batch:]).mean())
        state[0] += 1
        loss.backward()
        opt.step()
        return loss

    return step


def build_torch_amp(case: Case, impl: str):
    """PyTorch eager, ``torch.autocast(bfloat16)``, channels-last, SGD momentum, cuDNN autotuning
    (``cudnn.benchmark``), on the GPU if there is one. ``impl``: "torchvision"
    (``torchvision.models.<arch>``), "timm" (``timm.create_model(arch)``: ViT's attention through
    PyTorch's fused ``scaled_dot_product_attention``), "ref" (:mod:`jtl.bench.torch_models`, the
    same architecture) or "auto" (the first of torchvision, timm that has ``arch``, else "ref").
    Returns (step, sync, info)."""
    import torch
    import torch.nn.functional as F

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model, version = None, None
    if impl in ("auto", "torchvision"):
        try:
            import torchvision

            if hasattr(torchvision.models, case.arch) or impl == "torchvision":
                model, impl = getattr(torchvision.models, case.arch)(num_classes=case.num_classes), "torchvision"
                version = torchvision.__version__
        except ImportError:
            if impl == "torchvision":
                raise
    if model is None and impl in ("auto", "timm"):
        try:
            import timm

            if timm.is_model(case.arch) or impl == "timm":
                model, impl, version = timm.create_model(case.arch, num_classes=case.num_classes), "timm", timm.__version__
        except ImportError:
            if impl == "timm":
                raise
    if model is None:
        from jtl.bench.torch_models import create_model

        class Logits(torch.nn.Module):  # the reference returns (logits, pooled)
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, t):
                return self.m(t)[0]

        model, impl = Logits(create_model(case.arch, case.num_classes)), "ref"
    model.to(dev, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    xt, yt = _tensors(case, torch.channels_last, dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    info = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "impl": impl, "version": version,
            "params": sum(p.numel() for p in model.parameters())}
    return step, sync, info


def _profile(step, sync, steps: int) -> dict:
    """Device kernels (CUDA) or operators (CPU) of ``steps`` steps, by self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from jtl.bench.trace import top_kernels

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        sync()
    ev = []
    for e in prof.key_averages():
        if cuda and not str(e.device_type).endswith("CUDA"):
            continue
        t = (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) if cuda \
            else e.self_cpu_time_total
        ev += [(e.key, t / e.count)] * e.count
    return {"device_ms_per_step": round(sum(d for _, d in ev) / steps / 1e3, 2), "top": top_kernels(ev, steps)}


def serve(lines=sys.stdin, out=sys.stdout) -> None:
    """The worker: ``build`` (a CPU case: ``case``, ``threads``, ``channels_last``), ``build_amp``
    (the GPU case: ``case``, ``impl``), ``run`` (``steps``: seconds, synchronised), ``stats``
    (last loss, CUDA memory peaks), ``profile`` (``steps``)."""
    import torch

    step = sync = None
    last = [None]

    def run(n: int) -> float:
        sync()
        t = time.perf_counter()
        for _ in range(n):
            last[0] = step()
        sync()
        return time.perf_counter() - t

    for line in lines:
        cmd = json.loads(line)
        if cmd["cmd"] in ("build", "build_amp"):
            if cmd["cmd"] == "build":
                torch.set_num_threads(cmd["threads"])
                step, sync, ans = build_torch(Case(*cmd["case"]), cmd["channels_last"]), (lambda: None), {}
            else:
                step, sync, ans = build_torch_amp(Case(*cmd["case"]), cmd["impl"])
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
            ans["first_s"] = run(1)
        elif cmd["cmd"] == "run":
            ans = {"seconds": run(cmd["steps"])}
        elif cmd["cmd"] == "stats":
            ans = {"loss": last[0].item()}
            if torch.cuda.is_available():
                ans["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                ans["reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        else:  # profile
            ans = _profile(step, sync, cmd["steps"])
        print(json.dumps(ans), file=out, flush=True)


class TorchWorker:
    """A :func:`serve` process; ``env`` is added to this process's environment (e.g. ``OMP_WAIT_POLICY``)."""

    def __init__(self, **env: str):
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the jtl package
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "jtl.bench.torch_step"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=path, **env))

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def run(self, steps: int) -> float:
        """Seconds of ``steps`` steps, as the worker measured them."""
        return self.call(cmd="run", steps=steps)["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def _setting(channels_last: bool, threads: int, policy: str) -> str:
    return f"{'channels_last' if channels_last else 'nchw'}, {threads} threads, OMP_WAIT_POLICY={policy}"


# libgomp's OMP_WAIT_POLICY=active spins an idle thread for GOMP_SPINCOUNT iterations, 3e10 (about
# 5 minutes) unless set: the active worker's threads kept spinning through the rounds of jtl and
# of the passive worker, taking a core from each (ViT-S/16 in bench_train_step.py: jtl's step
# 21.6 s beside it, 15.6 s with the bound below, PyTorch's 9.6 and 9.8 s). 3e6 spins (libgomp's estimate: 30 ms) keep the gaps inside a step busy-waited
# and free the cores soon after the worker's own steps (tests/test_perf_numerics.py).
ACTIVE_SPINCOUNT = "3000000"


def torch_workers(case: Case) -> dict[str, TorchWorker]:
    """PyTorch workers for ``case``, by setting: OpenMP wait policy ``passive`` in its fastest
    setting (memory format x threads, by a short timing: one warm-up and 2 steps each) and
    ``active`` with the same memory format and all cores. Both are timed in every round and the
    faster counts, since which one wins changes with the machine's load."""
    threads = os.cpu_count() or 1
    passive = TorchWorker(OMP_WAIT_POLICY="passive")
    best = None
    for n in sorted({threads, 1}, reverse=True):
        for cl in (False, True):
            passive.call(cmd="build", case=list(case), threads=n, channels_last=cl)
            t = passive.run(2)
            if best is None or t < best[0]:
                best = (t, n, cl)
    _, n, cl = best
    passive.call(cmd="build", case=list(case), threads=n, channels_last=cl)
    workers = {_setting(cl, n, "passive"): passive}
    if threads > 1:
        active = TorchWorker(OMP_WAIT_POLICY="active", GOMP_SPINCOUNT=ACTIVE_SPINCOUNT)
        active.call(cmd="build", case=list(case), threads=threads, channels_last=cl)
        workers[_setting(cl, threads, "active")] = active
    return workers


def torch_version() -> str:
    """This Python's torch version ("" without torch), asked in a subprocess (no import here)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                         text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    serve()
