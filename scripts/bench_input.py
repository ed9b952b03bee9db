"""Input pipeline throughput against the demo model's train step.

    python scripts/bench_input.py [--seconds 8] [--out report.md]   (figures: docs/benchmarks.md)

Measures, on this machine:
1. paired Fashion-MNIST -> MNIST-M-style batches (2 x 128 images, 32 px, crop + flip,
   gray source repeated to RGB, ImageNet normalisation), host float32 and uint8 + on-device
   normalisation;
2. a generated JPEG image folder (500x375 photos-like images) at 224 px, batch 32;
3. the train step of ``cifar_resnet8`` (5 classes, 32x32x3, batch 128, SGD momentum).
Images/s count every image delivered (source and target for the paired pipeline).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def rate(fn, batch_images: int, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * batch_images / (time.perf_counter() - start)


def device_normalise(it_mean, it_std, channels):
    import jax

    from jtl.data import preprocess_on_device

    @jax.jit
    def f(image):
        return preprocess_on_device({"image": image}, it_mean, it_std, channels)["image"]

    return f


def bench_paired(seconds: float) -> dict:
    import jax

    import jtl.data as D

    t0 = time.perf_counter()
    src, tgt = D.load("fashion_mnist", "train"), D.load("fashion_mnist:mnistm", "train")
    load_s = time.perf_counter() - t0
    out = {"load_s": load_s}
    for output in ("float32", "uint8"):
        kw = dict(batch_size=128, image_size=32, channels=3, augment=("crop", "flip"), output=output)
        pair = D.paired_iterator(D.make_iterator(src, seed=0, **kw), D.make_iterator(tgt, seed=1, **kw))
        if output == "float32":
            step = lambda: next(pair)  # noqa: E731
        else:
            norm = device_normalise(pair.source.mean, pair.source.std, 3)

            def step():
                b = next(pair)
                jax.block_until_ready((norm(b["source"]["image"]), norm(b["target"]["image"])))

        out[output] = rate(step, 256, seconds)
    return out


def make_folder(root: Path, per_class: int = 60, classes: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            f = rng.uniform(0.005, 0.05, 3)
            img = np.stack([np.sin(xx * f[k] + yy * f[(k + 1) % 3] + rng.uniform(0, 6)) for k in range(3)], -1)
            img = (img * 100 + 128 + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i:04d}.jpg", quality=90)


def bench_folder(seconds: float) -> dict:
    import jax

    import jtl.data as D

    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp))
        src = D.load(f"folder:{tmp}", "all")
        out = {"n": len(src)}
        for output in ("float32", "uint8"):
            it = D.make_iterator(src, batch_size=32, seed=0, image_size=224, augment=("crop", "flip"), output=output)
            if output == "float32":
                step = lambda: next(it)  # noqa: E731
            else:
                norm = device_normalise(it.mean, it.std, None)
                step = lambda: jax.block_until_ready(norm(next(it)["image"]))  # noqa: E731
            out[output] = rate(step, 32, seconds)
    return out


def bench_train_step(seconds: float) -> float:
    import jax
    import jax.numpy as jnp
    import optax

    from jtl.models import create_model

    model = create_model("cifar_resnet8", num_classes=5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(128, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(np.arange(128) % 5, jnp.int32)
    variables = model.init(jax.random.key(0), x, train=False)
    tx = optax.sgd(0.01, momentum=0.9)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    @jax.jit
    def train_step(state, x, y):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    holder = [state]

    def step():
        holder[0], loss = train_step(holder[0], x, y)
        loss.block_until_ready()

    return rate(step, 128, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timing window per measurement")
    parser.add_argument("--out", help="also write the markdown report here")
    args = parser.parse_args()
    import jax

    paired = bench_paired(args.seconds)
    folder = bench_folder(args.seconds)
    train = bench_train_step(args.seconds)
    best = max(paired["float32"], paired["uint8"])
    lines = [
        "## Input pipeline",
        "",
        f"`python scripts/bench_input.py --seconds {args.seconds:g}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}); images/s, higher is better.",
        "",
        "| pipeline | host float32 | host uint8 + device normalise |",
        "|---|---:|---:|",
        f"| paired fashion_mnist -> fashion_mnist:mnistm, 32 px, 2 x 128 | {paired['float32']:,.0f} | {paired['uint8']:,.0f} |",
        f"| JPEG folder (500x375), 224 px, batch 32 | {folder['float32']:,.0f} | {folder['uint8']:,.0f} |",
        "",
        f"- Train step of `cifar_resnet8` (5 classes, 32x32x3, batch 128, SGD momentum): {train:,.0f} images/s.",
        f"- Paired input / train step: {best / train:.1f}x (required: at least 5x).",
        f"- `load()` of both splits (preparing them if not yet cached, then reading into memory): {paired['load_s']:.1f} s.",
        "- Each pipeline ran alone; the train step used synthetic data (no input pipeline beside it).",
        "- Device normalisation = `make_iterator(..., output=\"uint8\")` + jitted `preprocess_on_device`.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
