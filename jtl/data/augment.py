"""Batch augmentations on host (numpy/PIL) and normalisation on host or device.

- ``crop``: random resized crop (Szegedy et al. 2015): area fraction a ~ U(scale),
  log aspect ratio ~ U(log ratio), box (a H W r)^1/2 x (a H W / r)^1/2 placed uniformly;
  up to 10 draws, else the whole image. The box is resampled to the output size.
- ``center_crop`` / ``random_crop``: the ``image_size`` x ``image_size`` window at the centre
  (offsets ``round((H - S) / 2)``, halves to even, as torchvision's ``CenterCrop``) or at a
  uniformly drawn integer offset (torchvision's ``RandomCrop``); no resampling. Transfer-Learning-
  Library's (TLlib) ``--train-resizing cen.crop`` and ``ran.crop``. At most one of the three crops.
- ``flip``: horizontal flip with probability 1/2.
- ``jitter``: colour jitter, factors f ~ U(1 - s, 1 + s) applied in this order:
  brightness ``x f``, contrast ``(x - m) f + m`` (m the image's mean luminance),
  saturation ``g + (x - g) f`` (g the pixel's luminance; RGB only).
- ``resize`` R > 0 (``data.resize``): first of all, every image is resampled to R x R (aspect
  ratio not kept; bicubic, antialiased: TLlib's ``ResizeImage``, which calls PIL's ``resize``
  with its default filter), and the crops above are taken from that image.
- resize: without a crop, the whole image is resampled to ``image_size`` (bilinear,
  antialiased) when its size differs.
- eval (``data.eval_crop``): ``"none"`` resamples the whole image to ``image_size``;
  ``"center"`` takes the centre crop (TLlib's test transform: R = 256, centre 224).
- normalise: ``(x / 255 - mean) / std`` per channel.

Luminance is ITU-R BT.601: ``0.299 R + 0.587 G + 0.114 B``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from jtl.errors import ConfigError, DataError, JtlError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Inception-v3 (Google) weights: inputs scaled to [-1, 1], (x - 0.5) / 0.5 (torchvision transform_input)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
CROPS = ("crop", "center_crop", "random_crop")
EVAL_CROPS = {"none": {}, "center": {"center_crop": {}}}  # data.eval_crop -> the eval pipeline's augment
LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)
DEFAULTS: dict[str, dict[str, Any]] = {
    "crop": {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)},
    "center_crop": {},
    "random_crop": {},
    "flip": {},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
}


def parse(augment: Sequence | None) -> dict[str, dict[str, Any]]:
    """``("crop", ("jitter", {"brightness": .2}))`` -> ``{"crop": {...}, "jitter": {...}}``."""
    out = {}
    for item in augment or ():
        name, kwargs = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
        if name not in DEFAULTS:
            raise DataError(f"unknown augmentation {name!r}; known: {', '.join(DEFAULTS)}")
        unknown = set(kwargs) - set(DEFAULTS[name])
        if unknown:
            raise DataError(f"augmentation {name!r} has no option(s) {sorted(unknown)}")
        out[name] = {**DEFAULTS[name], **kwargs}
    if len([c for c in CROPS if c in out]) > 1:
        raise DataError(f"augment takes one crop of {', '.join(CROPS)}; got {[c for c in CROPS if c in out]}")
    return out


def check_config(data) -> None:
    """``cfg.data``'s geometry and augmentation, refused with one line before a workdir is written:
    ``resize`` 0 or at least ``image_size``, ``eval_crop`` none or center, known augmentations with
    at most one crop."""
    if not (data.resize == 0 or data.resize >= data.image_size):
        raise ConfigError(f"data.resize must be 0 (off) or at least data.image_size={data.image_size} "
                          f"(crops are cut from the resized image), got {data.resize}")
    if data.eval_crop not in ("none", "center"):
        raise ConfigError(f"data.eval_crop must be none or center, got {data.eval_crop!r}")
    try:
        parse(data.augment)
    except JtlError as e:
        raise ConfigError(f"data.augment: {e}") from None


def geometry(spec) -> dict:
    """``make_iterator``'s geometry keywords (``image_size``, ``resize``, ``eval_crop``) from
    ``cfg.data`` or a run's recorded ``normalization`` (runs recorded before ``resize`` and
    ``eval_crop`` existed have neither: off)."""
    return {"image_size": spec["image_size"], "resize": int(spec.get("resize", 0) or 0),
            "eval_crop": spec.get("eval_crop", "none") or "none"}


def crop_boxes(h: int, w: int, n: int, rng: np.random.Generator, scale, ratio, tries: int = 10) -> np.ndarray:
    """(n, 4) boxes (x0, y0, x1, y1) in pixels for a random resized crop of an h x w image."""
    area = rng.uniform(scale[0], scale[1], (n, tries)) * h * w
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, tries)))
    cw, ch = np.sqrt(area * r), np.sqrt(area / r)
    ok = (cw <= w) & (ch <= h)
    first = np.argmax(ok, axis=1)
    rows = np.arange(n)
    cw = np.where(ok.any(1), cw[rows, first], w)
    ch = np.where(ok.any(1), ch[rows, first], h)
    x0 = rng.uniform(0, 1, n) * (w - cw)
    y0 = rng.uniform(0, 1, n) * (h - ch)
    return np.stack([x0, y0, x0 + cw, y0 + ch], axis=1)


def _resample(img: np.ndarray, wh: tuple[int, int], box=None, resample=Image.BILINEAR) -> np.ndarray:
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out = np.asarray(pil.resize(wh, resample, box=None if box is None else tuple(box)))
    return out[..., None] if out.ndim == 2 else out


def _window(img: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """The ``size`` x ``size`` window at the centre (``rng`` None) or at a random integer offset."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise DataError(f"a {h}x{w} image is smaller than the {size} px crop; set data.resize to at least "
                        f"{size} (every image resized first) or lower data.image_size")
    if rng is None:
        top, left = round((h - size) / 2), round((w - size) / 2)
    else:
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[top : top + size, left : left + size]


def geometric(images, size: int | None, aug: dict, rng: np.random.Generator | None, resize: int = 0) -> np.ndarray:
    """Resize each image to ``resize`` x ``resize`` (0: not), crop/resize it to ``size`` (None: keep
    its size) and flip; ``images``: an array or a list of arrays."""
    n = len(images)
    if resize and not (isinstance(images, np.ndarray) and images.shape[1:3] == (resize, resize)):
        images = np.stack([_resample(im, (resize, resize), resample=Image.BICUBIC) for im in images])
    fixed = next((c for c in ("center_crop", "random_crop") if c in aug), None)
    if fixed is not None:
        if size is None:
            raise DataError(f"augment {fixed!r} needs image_size")
        images = [_window(im, size, rng if fixed == "random_crop" else None) for im in images]
    elif "crop" in aug:
        if isinstance(images, np.ndarray):
            boxes = crop_boxes(*images.shape[1:3], n, rng, **aug["crop"])
        else:
            boxes = [crop_boxes(*im.shape[:2], 1, rng, **aug["crop"])[0] for im in images]
        images = [
            _resample(im, (size, size) if size else (im.shape[1], im.shape[0]), box) for im, box in zip(images, boxes)
        ]
    elif size is not None:
        if not isinstance(images, np.ndarray) or images.shape[1:3] != (size, size):
            images = [_resample(im, (size, size)) for im in images]
    if not isinstance(images, np.ndarray):
        if len({im.shape for im in images}) > 1:
            raise DataError("images have different sizes; pass image_size= to make_iterator")
        images = np.stack(images)
    if "flip" in aug:
        flip = rng.random(n) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    return images


def to_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    """Gray -> RGB by repetition; RGB -> gray by luminance (returns float32 then)."""
    c = x.shape[-1]
    if channels is None or channels == c:
        return x
    if c == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if c == 3 and channels == 1:
        return (x.astype(np.float32) @ LUMA)[..., None]
    raise DataError(f"cannot convert images with {c} channels to {channels}")


def jitter(x: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, saturation: float):
    """Colour jitter of a float32 batch in [0, 255] (see module docstring)."""
    n = len(x)
    x = x.astype(np.float32)
    shape = (n, 1, 1, 1)
    x = x * rng.uniform(1 - brightness, 1 + brightness, n).astype(np.float32).reshape(shape)
    lum = x @ LUMA if x.shape[-1] == 3 else x[..., 0]
    m = lum.mean(axis=(1, 2)).reshape(shape)
    x = (x - m) * rng.uniform(1 - contrast, 1 + contrast, n).astype(np.float32).reshape(shape) + m
    if x.shape[-1] == 3:
        g = (x @ LUMA)[..., None]
        x = g + (x - g) * rng.uniform(1 - saturation, 1 + saturation, n).astype(np.float32).reshape(shape)
    return np.clip(x, 0, 255)


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    """``(x / 255 - mean) / std`` as float32."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return ((x.astype(np.float32) * (1 / 255.0) - mean) / std).astype(np.float32)


def preprocess_on_device(batch: dict, mean, std, channels: int | None = None) -> dict:
    """Device twin of the host's last steps: uint8 -> float32, gray -> RGB, normalise.

    Use inside the jitted step with a batch from ``make_iterator(..., output="uint8")``;
    ``mean``/``std`` are the iterator's ``mean``/``std`` attributes.
    """
    import jax.numpy as jnp

    x = batch["image"]
    if channels == 3 and x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = (x.astype(jnp.float32) * (1 / 255.0) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return {**batch, "image": x}
