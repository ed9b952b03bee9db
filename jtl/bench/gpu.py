"""The GPU case, both frameworks: jtl's step in bfloat16 against PyTorch AMP, channels-last.

jtl's step with compute dtype bfloat16 (the trainer's ``compute_dtype="bfloat16"``: float32
parameters, BatchNorm statistics in float32 and updated) against PyTorch eager under
``torch.autocast(bfloat16)`` with channels-last memory and ``cudnn.benchmark`` in a worker
process on the same GPU. Warm-up, then interleaved rounds of ``steps`` steps each, ending in
``block_until_ready`` / ``torch.cuda.synchronize``; medians. MFU = model FLOPs (3 x the plain
forward's, XLA's cost analysis) per second / a bf16 ``peak_n``^3 matmul timed by jax in the same
run. Imports only ``jtl.models`` and ``jtl.train.steps``/``state`` (no ml_collections, grain or tfds).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
import types
from pathlib import Path

from jtl.bench.cases import GPU_CASES
from jtl.bench.jtl_step import attention_impl, build_jtl, model_flops, plain_convolutions
from jtl.bench.timing import device_peak_bytes, matmul_peak_bf16, median, rounds, timed, xla_peak_mib
from jtl.bench.torch_step import TorchWorker


def import_jtl_steps() -> str:
    """``jtl.train.steps`` as the trainer imports it. If the package ``jtl.train`` fails to import
    (its ``__init__`` pulls in the trainer loop and orbax, whose versions on a lent machine may
    differ), the same modules are loaded without running ``jtl/train/__init__.py``; returns a note
    saying which happened. Call it before anything imports ``jtl.train``."""
    try:
        _import_steps()
        return "package"
    except ImportError as e:  # pragma: no cover - only on machines with other library versions
        for k in [k for k in sys.modules if k == "jtl.train" or k.startswith("jtl.train.")]:
            del sys.modules[k]
        pkg = types.ModuleType("jtl.train")
        pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "train")]
        sys.modules["jtl.train"] = pkg
        _import_steps()
        return f"modules only (import jtl.train failed: {e})"


def _import_steps() -> None:
    for name in ("jtl.train.state", "jtl.train.steps"):
        importlib.import_module(name)


class GpuComparison:
    """Case ``name`` of :data:`GPU_CASES` (``size``/``batch``: overrides), built, compiled and warmed
    up in both frameworks. ``impl``: PyTorch's model (see ``build_torch_amp``). ``conv="plain"``
    traces jtl's model with XLA's convolution for every layer and ``nn.max_pool``
    (``plain_convolutions``) instead of jtl's CPU-tuned dispatch (1x1 convolutions as dots, im2col
    on <= 2x2 maps, max pool gradient without select-and-scatter): an experiment, not what the
    trainer runs. :meth:`time` gives the result line, :meth:`profile` the longest device ops."""

    def __init__(self, name: str, size: int | None, batch: int | None, steps: int, impl: str, conv: str = "jtl",
                 attention: str = "jtl"):
        import jax
        import jax.numpy as jnp

        c = GPU_CASES[name]
        self.name, self.conv, self.attention, self.steps = name, conv, attention, steps
        self.case = c = c._replace(size=size or c.size, batch=batch or c.batch)
        t = time.perf_counter()
        with plain_convolutions() if conv == "plain" else contextlib.nullcontext(), attention_impl(attention):
            self.model, jstep, state, self.batch, _, _ = build_jtl(c, dtype=jnp.bfloat16)
            self.build_s = time.perf_counter() - t
            t = time.perf_counter()
            self.compiled = jstep.lower(state, self.batch).compile()
            self.compile_s = time.perf_counter() - t
        self.state, m = self.compiled(state, self.batch)
        jax.block_until_ready(m)
        self.first_s = time.perf_counter() - t  # trace + compile + first step (no compilation cache)
        self.xla_mib = xla_peak_mib(self.compiled)
        for _ in range(2):  # warm-up
            self.jtl_steps(steps)
        self.worker = TorchWorker()
        self.tinfo = self.worker.call(cmd="build_amp", case=list(c), impl=impl)
        for _ in range(2):  # warm-up (cuDNN autotuning happened in the first step)
            self.worker.run(steps)

    def jtl_steps(self, n: int):
        import jax

        s = self.state
        for _ in range(n):
            s, mm = self.compiled(s, self.batch)
        jax.block_until_ready(mm)
        self.state = s
        return mm

    def time(self, repeats: int, peak_n: int) -> dict:
        """Interleaved rounds; the case's result line."""
        import jax
        import jax.numpy as jnp

        c, steps = self.case, self.steps
        r = rounds({"jtl": lambda: timed(lambda: self.jtl_steps(steps)), "torch": lambda: self.worker.run(steps)},
                   repeats)
        tj, tt = [v / steps for v in r["jtl"]], [v / steps for v in r["torch"]]
        mm = self.jtl_steps(1)
        tstats = self.worker.call(cmd="stats")
        stats = jax.tree.leaves(self.state.batch_stats)
        flops = model_flops(self.model, c.size, c.batch, compile_=False)
        peak = matmul_peak_bf16(peak_n)
        mj, mt = median(tj), median(tt)
        dev_peak = device_peak_bytes()
        tinfo = self.tinfo
        return {
            "case": self.name, "arch": c.arch, "image_size": c.size, "batch": c.batch,
            "device": jax.devices()[0].device_kind,
            "jtl_img_s": round(c.batch / mj, 1), "torch_img_s": round(c.batch / mt, 1), "ratio": round(mt / mj, 3),
            "jtl_ms": round(mj * 1e3, 2), "torch_ms": round(mt * 1e3, 2),
            "jtl_ms_rounds": [round(v * 1e3, 2) for v in tj], "torch_ms_rounds": [round(v * 1e3, 2) for v in tt],
            "torch_setting": f"eager, autocast bf16, channels_last, cudnn.benchmark, {tinfo['impl']} {c.arch}"
                             + (f" {tinfo['version']}" if tinfo.get("version") else ""),
            "jtl_conv": self.conv, "jtl_attention": self.attention,
            "model_gflop_per_img": round(flops / c.batch / 1e9, 2), "mfu": round(flops / mj / peak, 3),
            "torch_mfu": round(flops / mt / peak, 3), "bf16_matmul_peak_tflop_s": round(peak / 1e12, 1),
            "matmul_n": peak_n, "jtl_first_step_s": round(self.first_s, 2), "jtl_compile_s": round(self.compile_s, 2),
            "jtl_build_s": round(self.build_s, 2), "torch_first_step_s": round(tinfo["first_s"], 2),
            "jtl_xla_peak_mib": round(self.xla_mib, 1) if self.xla_mib is not None else None,
            "jtl_device_peak_mib": round(dev_peak / 2**20, 1) if dev_peak else None,
            "torch_peak_mib": round(tstats["peak_mib"], 1) if "peak_mib" in tstats else None,
            "jtl_loss": round(float(mm["loss"]), 4), "torch_loss": round(tstats["loss"], 4),
            "bn_stats_moved": bool(any(jnp.any(v != 0) for v in stats)) if stats else None, "steps_per_round": steps, "repeats": repeats,
            "torch_params": tinfo["params"],
            "jtl_params": int(sum(v.size for v in jax.tree.leaves(self.state.params))),
        }

    def profile(self, log_dir: str) -> dict:
        """Both frameworks' device ops over ``max(2, steps // 4)`` steps: ``{"jtl_ms_per_step",
        "torch_ms_per_step", "jtl_top", "torch_top" ([(op, ms per step, calls per step)]),
        "jtl_lines" ({trace line: ms per step})}``; jax's Perfetto trace goes to ``log_dir``."""
        from jtl.bench.trace import profile_jtl

        pst = max(2, self.steps // 4)
        self.state, total, jtop, lines = profile_jtl(self.compiled, self.state, self.batch, pst, log_dir)
        tprof = self.worker.call(cmd="profile", steps=pst)
        return {"jtl_ms_per_step": total, "torch_ms_per_step": tprof["device_ms_per_step"], "jtl_top": jtop,
                "torch_top": tprof["top"], "jtl_lines": lines}

    def close(self):
        self.worker.close()
