"""Benchmarks of jtl's train step against PyTorch eager: the library behind ``scripts/bench_*.py``.

- :mod:`jtl.bench.cases`: the benchmark cases (architecture, classes, image size, batch) and their data;
- :mod:`jtl.bench.timing`: interleaved timing of several callables, medians, matmul peaks, memory;
- :mod:`jtl.bench.jtl_step`: jtl's compiled train step for a case, its FLOPs and first-step times;
- :mod:`jtl.bench.conv_layers`: the step's convolutions, each timed against PyTorch's;
- :mod:`jtl.bench.trace`: compiled programs and profiler traces, by operation;
- :mod:`jtl.bench.torch_models` (ResNets; ViT and ConvNeXt in :mod:`jtl.bench.torch_vit_convnext`),
  :mod:`jtl.bench.torch_step`: the PyTorch reference models and train steps, and the worker
  processes that run them;
- :mod:`jtl.bench.compare` (CPU) and :mod:`jtl.bench.gpu` (GPU, bfloat16): one case, both frameworks.

Nothing is imported here: the GPU bench must import ``jtl.train.steps`` before anything else
imports ``jtl.train`` (:func:`jtl.bench.gpu.import_jtl_steps`). PyTorch is a dev extra: only
:mod:`jtl.bench.torch_models` and :mod:`jtl.bench.torch_vit_convnext` import it at module level,
the other modules inside the functions that run PyTorch, so every module but those two imports
without torch.
"""
