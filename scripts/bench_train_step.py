"""jtl's train step against PyTorch eager on the same machine, in the same invocation.

    .venv/bin/python scripts/bench_train_step.py [--cases resnet18_64,...] [--repeats 7] [--steps 3]
    (figures and machine: docs/benchmarks.md, "Train step vs PyTorch")

Each case runs jtl's real compiled step (``make_loss_fn`` + ``make_train_step`` +
``jit_train_step``, SGD with momentum 0.9) and the same architecture, batch, image
size, dtype (float32) and optimizer in PyTorch (``jtl.bench.torch_models``), run
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
forward pass of the ``TransferModel`` with jtl's defaults, a 256-d bottleneck and a
1024-1024 discriminator behind gradient reversal; loss pieces ``ce`` + ``dann``). Two more run
only when named (``--cases vit_s16_224,convnext_t_224`` or ``--cases all``; slow on a small CPU):
``vit_s16_224`` (ViT-S/16, ``vit_small_patch16_224``, 224 px, batch 32) and ``convnext_t_224``
(ConvNeXt-T, ``convnext_tiny``, 224 px, batch 16), both ``TransferModel``s of jtl's families against
``jtl.bench.torch_vit_convnext`` (PyTorch's fused ``scaled_dot_product_attention`` for ViT).

GPU mode (``--device gpu``, case ``resnet50_224_bf16``: ResNet-50, 224 px, batch 256)::

    PYTHONUNBUFFERED=1 python3 scripts/bench_train_step.py --device gpu [--batch 256] [--profile DIR]

jtl's step with compute dtype bfloat16 (the trainer's ``compute_dtype="bfloat16"``: float32
parameters, BatchNorm statistics in float32 and updated) against PyTorch eager under
``torch.autocast(bfloat16)`` with channels-last memory and ``cudnn.benchmark`` (torchvision's
model when installed, else ``jtl.bench.torch_models``), same batch and SGD momentum, in a
worker process on the same GPU (both allocate on demand: ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
unless a memory fraction is set). Warm-up, then ``--repeats`` interleaved rounds of ``--steps``
steps each, ending in ``block_until_ready`` / ``torch.cuda.synchronize``; medians. MFU = model
FLOPs (3 x the plain forward's, XLA's cost analysis) per second / a bf16 ``--peak-n``^3 matmul
timed by jax in the same run. Memory: XLA's buffers for the step, the jax allocator's peak and
``torch.cuda.max_memory_allocated``. ``--profile DIR`` adds each framework's longest-running
device kernels (jax profiler's Perfetto trace, torch.profiler). Imports only ``jtl.models`` and
``jtl.train.steps``/``state`` (no ml_collections, grain or tfds).

The benchmark itself is ``jtl.bench`` (``compare.run_case``, ``gpu.GpuComparison``); this script
parses the command line and prints the lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jtl.bench.cases import CASES, DEFAULT_CASES, GPU_CASES, ON_DEMAND  # noqa: E402
from jtl.bench.timing import machine, matmul_peak  # noqa: E402
from jtl.bench.torch_step import torch_version  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help=f"CPU: {','.join(CASES)} (default: all but "
                   f"{','.join(ON_DEMAND)}; 'all': every one); "
                   f"GPU: {','.join(GPU_CASES)} (default with --device gpu)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: the mixed-precision cases (GPU_CASES) on jax's default backend")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: 7 CPU, 5 GPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: 3 CPU, 20 GPU)")
    p.add_argument("--batch", type=int, default=None, help="GPU cases: override the batch")
    p.add_argument("--image-size", type=int, default=None, help="GPU cases: override the image size")
    p.add_argument("--peak-n", type=int, default=8192, help="GPU cases: n of the bf16 n^3 matmul peak")
    p.add_argument("--torch-model", default="auto", choices=("auto", "torchvision", "timm", "ref"),
                   help="GPU cases: torchvision's or timm's model (auto: the first installed that has "
                        "the architecture) or jtl.bench.torch_models")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="GPU cases: also profile both frameworks and print the longest device ops")
    p.add_argument("--jtl-conv", default="jtl", choices=("jtl", "plain"),
                   help="GPU cases, experiment: 'plain' = XLA's convolution for every layer "
                        "(see jtl.bench.gpu.GpuComparison)")
    p.add_argument("--jtl-attention", default="jtl", choices=("jtl", "einsum", "xla", "cudnn"),
                   help="GPU cases, experiment: ViT attention as jtl chooses (cuDNN's fused kernel on a GPU), "
                        "as einsums, or through jax.nn.dot_product_attention (see jtl.bench.jtl_step.attention_impl)")
    a = p.parse_args(argv)
    if a.device == "gpu":
        return main_gpu(a)
    names = list(DEFAULT_CASES) if not a.cases else list(CASES) if a.cases == "all" else a.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {','.join(unknown)}; known: {','.join(CASES)}")
    import jax

    from jtl.bench.compare import run_case

    print(json.dumps({**machine(), "jax": jax.__version__, "torch": torch_version(),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        for name in names:
            # The peak is re-measured next to each case: the machine's load changes between cases.
            print(json.dumps(run_case(name, a.repeats or 7, a.steps or 3, matmul_peak(), cache_dir)), flush=True)


def main_gpu(a):
    # jax would otherwise take 75% of the GPU's memory up front, and PyTorch runs in a second
    # process on the same GPU: both allocate on demand (each keeps its cache between rounds).
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from jtl.bench.gpu import GpuComparison, import_jtl_steps

    how = import_jtl_steps()
    import jax

    print(json.dumps({**machine(), "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                      "jax": jax.__version__, "torch": torch_version(), "jtl_train_import": how,
                      "xla_flags": os.environ.get("XLA_FLAGS", ""),
                      "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}), flush=True)
    for name in (a.cases or ",".join(GPU_CASES)).split(","):
        run = GpuComparison(name, a.image_size, a.batch, a.steps or 20, a.torch_model, a.jtl_conv, a.jtl_attention)
        print(json.dumps(run.time(a.repeats or 5, a.peak_n)), flush=True)
        if a.profile:
            print_profile(run, name, a.profile)
        run.close()


def print_profile(run, name: str, log_dir: str) -> None:
    """Both frameworks' longest device ops, after the case's line (whose timings are already out)."""
    try:
        prof = run.profile(log_dir)
    except Exception as e:  # noqa: BLE001 - the timings above are already out
        print(f"# profiling failed: {e!r}", flush=True)
        return
    print("# jtl trace, device lines (ms per step):", json.dumps(prof["jtl_lines"]))
    print(json.dumps({"case": name, "jtl_profile_ms_per_step": prof["jtl_ms_per_step"],
                      "torch_profile_ms_per_step": prof["torch_ms_per_step"]}), flush=True)
    for who in ("jtl", "torch"):
        print(f"# {who}: top device ops, ms per step, calls per step")
        for row in prof[f"{who}_top"]:
            print(f"#   {row[1]:9.3f} {row[2]:6.1f}  {row[0]}")


if __name__ == "__main__":
    main()
