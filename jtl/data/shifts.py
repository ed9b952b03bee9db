"""Domain shifts: pure functions ``(images uint8 (N, H, W, C), rng) -> images uint8``.

A shift spec is ``kind[@param]``; several are joined with ``+`` and applied left to
right. Kinds (``x`` is a pixel in [0, 255], ``s`` a severity in 1..5):

- ``mnistm``: MNIST-M style (Ganin et al. 2016, "Domain-adversarial training of neural
  networks", JMLR): a random patch ``b`` of a random background photo, then
  ``y_c = |b_c - x|`` per colour channel c. Output is RGB.
- ``invert``: ``y = 255 - x``.
- ``rotate@D``: rotation by an angle drawn uniformly from [-D, D] degrees (default 30),
  bilinear, black fill.
- ``angle@D``: rotation of every image by exactly D degrees (0..359), bilinear, black fill
  (DomainBed's RotatedMNIST domains: 0, 15, 30, 45, 60, 75; Ghifary et al. 2015).
- ``noise@s``: ``y = clip(x/255 + N(0, c_s^2)) * 255``, c = (.04, .06, .08, .09, .10).
- ``blur@s``: Gaussian blur with sigma c = (.4, .6, .7, .8, 1.0) px.
- ``contrast@s``: ``y = (x - m) c + m`` with m the image mean, c = (.75, .5, .4, .3, .15).
- ``shot@s``: Poisson noise ``y = clip(Poisson(c x/255) / c) * 255``, c = (500, 250, 100, 75, 50).
- ``impulse@s``: salt-and-pepper noise: each value becomes 0 or 255 (even odds) with
  probability c = (.01, .02, .03, .05, .07).
- ``brightness@s``: HSV value ``v <- clip(v + c)`` (gray: ``y = clip(x/255 + c) * 255``),
  c = (.05, .1, .15, .2, .3).
- ``pixelate@s``: box-downsampled to ``int(c H) x int(c W)`` and box-upsampled back,
  c = (.95, .9, .85, .75, .65).
- ``resize@N``: resampled to N x N px (bilinear, antialiased; default 14).

The severity constants of noise/blur/contrast are those of CIFAR-10-C (Hendrycks &
Dietterich 2019, "Benchmarking neural network robustness to common corruptions and
perturbations", ICLR), which suit 28-32 px images; so are those of shot, impulse, brightness and
pixelate (``CORRUPTIONS``: the Fashion-MNIST-C stream of docs/test-time.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from jtl.errors import DataError

NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)
BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
SHOT = (500, 250, 100, 75, 50)
IMPULSE = (0.01, 0.02, 0.03, 0.05, 0.07)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
SKIMAGE_BACKGROUNDS = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle",
)


@dataclasses.dataclass(frozen=True)
class Shift:
    """One shift: ``kind`` and its integer parameter (severity, degrees or pixels)."""

    kind: str
    param: int | None = None

    def __str__(self) -> str:
        return self.kind if self.param is None else f"{self.kind}@{self.param}"


# kind -> (default parameter, allowed range or None when the kind takes no parameter)
KINDS: dict[str, tuple[int | None, tuple[int, int] | None]] = {
    "mnistm": (None, None),
    "invert": (None, None),
    "rotate": (30, (1, 180)),
    "angle": (0, (0, 359)),
    "noise": (3, (1, 5)),
    "blur": (3, (1, 5)),
    "contrast": (3, (1, 5)),
    "shot": (3, (1, 5)),
    "impulse": (3, (1, 5)),
    "brightness": (3, (1, 5)),
    "pixelate": (3, (1, 5)),
    "resize": (14, (2, 1024)),
}


def parse_shifts(text: str, name: str = "") -> tuple[Shift, ...]:
    """``"mnistm+noise@3"`` -> ``(Shift("mnistm"), Shift("noise", 3))``."""
    out = []
    for part in text.split("+"):
        kind, _, param = part.partition("@")
        if kind not in KINDS:
            raise DataError(f"unknown shift {kind!r} in {name or text!r}; known: {', '.join(KINDS)}")
        default, bounds = KINDS[kind]
        if bounds is None:
            if param:
                raise DataError(f"shift {kind!r} takes no @parameter (in {name or text!r})")
            out.append(Shift(kind))
            continue
        try:
            value = int(param) if param else default
        except ValueError:
            raise DataError(f"shift parameter must be an integer, got {part!r} in {name or text!r}") from None
        if not bounds[0] <= value <= bounds[1]:
            raise DataError(f"{kind}@{value} out of range {bounds[0]}..{bounds[1]} in {name or text!r}")
        out.append(Shift(kind, value))
    return tuple(out)


def output_shape(shape: tuple[int, int, int], shifts: tuple[Shift, ...]) -> tuple[int, int, int]:
    """Image shape (H, W, C) after ``shifts``."""
    h, w, c = shape
    for s in shifts:
        if s.kind == "mnistm":
            c = 3
        elif s.kind == "resize":
            h = w = s.param
    return h, w, c


# ---------------------------------------------------------------- backgrounds


def load_backgrounds(directory: str | None = None) -> list[np.ndarray]:
    """RGB uint8 background photos: scikit-image's bundled ones, or every jpg/png in ``directory``."""
    if directory is None:
        import skimage.data

        out = []
        for name in SKIMAGE_BACKGROUNDS:
            img = getattr(skimage.data, name)()
            out.append(np.ascontiguousarray((img[0] if isinstance(img, tuple) else img)[..., :3]))
        return out
    files = sorted(p for p in Path(directory).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise DataError(f"no .jpg/.png background photos in {directory}")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise DataError(f"cannot read background photo {f}: {e}") from None
    return out


def backgrounds_digest(backgrounds: list[np.ndarray]) -> str:
    """8 hex digits identifying a background set by its pixels."""
    h = hashlib.sha1()
    for b in backgrounds:
        h.update(str(b.shape).encode())
        h.update(b.tobytes())
    return h.hexdigest()[:8]


# ---------------------------------------------------------------- shifts


def _gray_to_rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def mnistm(x: np.ndarray, rng: np.random.Generator, backgrounds: list[np.ndarray]) -> np.ndarray:
    """``|patch - x|`` per channel, patch a random H x W crop of a random background."""
    n, h, w, _ = x.shape
    which = rng.integers(len(backgrounds), size=n)
    u = rng.random((n, 2))
    patches = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        b = backgrounds[which[i]]
        if b.shape[0] < h or b.shape[1] < w:
            b = np.asarray(Image.fromarray(b).resize((max(w, b.shape[1]), max(h, b.shape[0]))))
        y0 = int(u[i, 0] * (b.shape[0] - h + 1))
        x0 = int(u[i, 1] * (b.shape[1] - w + 1))
        patches[i] = b[y0 : y0 + h, x0 : x0 + w]
    return np.abs(patches.astype(np.int16) - _gray_to_rgb(x).astype(np.int16)).astype(np.uint8)


def _per_image(x: np.ndarray, fn: Callable[[Image.Image, int], Image.Image]) -> np.ndarray:
    out = []
    for i, img in enumerate(x):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        arr = np.asarray(fn(pil, i))
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)


def rotate(x: np.ndarray, rng: np.random.Generator, degrees: int) -> np.ndarray:
    angles = rng.uniform(-degrees, degrees, size=len(x))
    return _per_image(x, lambda im, i: im.rotate(float(angles[i]), resample=Image.BILINEAR))


def angle(x: np.ndarray, rng: np.random.Generator, degrees: int) -> np.ndarray:
    del rng
    return _per_image(x, lambda im, i: im.rotate(float(degrees), resample=Image.BILINEAR))


def resize(x: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    del rng
    return _per_image(x, lambda im, i: im.resize((size, size), Image.BILINEAR))


def noise(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    y = x / 255.0 + rng.normal(0.0, NOISE[severity - 1], size=x.shape)
    return np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)


def blur(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    del rng
    s = BLUR[severity - 1]
    y = ndimage.gaussian_filter(x.astype(np.float32), sigma=(0, s, s, 0), mode="reflect")
    return np.round(np.clip(y, 0, 255)).astype(np.uint8)


def contrast(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    del rng
    c = CONTRAST[severity - 1]
    m = x.astype(np.float32).mean(axis=(1, 2, 3), keepdims=True)
    return np.round(np.clip((x - m) * c + m, 0, 255)).astype(np.uint8)


def shot(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    c = SHOT[severity - 1]
    return np.round(np.clip(rng.poisson(x / 255.0 * c) / c, 0, 1) * 255).astype(np.uint8)


def impulse(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    flipped = rng.random(x.shape) < IMPULSE[severity - 1]
    salt = rng.random(x.shape) < 0.5
    return np.where(flipped, np.where(salt, 255, 0), x).astype(np.uint8)


def brightness(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    del rng
    c = BRIGHTNESS[severity - 1]
    if x.shape[-1] == 1:  # a gray pixel's HSV value is the pixel
        return np.round(np.clip(x / 255.0 + c, 0, 1) * 255).astype(np.uint8)
    from skimage import color  # noqa: PLC0415

    hsv = color.rgb2hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.round(np.clip(color.hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8)


def pixelate(x: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    del rng
    c = PIXELATE[severity - 1]
    h, w = x.shape[1:3]
    return _per_image(x, lambda im, i: im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))


CORRUPTIONS = {"shot": shot, "impulse": impulse, "brightness": brightness, "pixelate": pixelate}


def invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    return 255 - x


def apply(
    x: np.ndarray, shifts: tuple[Shift, ...], seed: int, backgrounds: list[np.ndarray] | None = None
) -> np.ndarray:
    """Apply ``shifts`` in order to all of ``x``; shift k draws from its own stream of ``seed``."""
    for k, s in enumerate(shifts):
        rng = np.random.default_rng([seed, k, zlib.crc32(s.kind.encode())])
        if s.kind == "mnistm":
            x = mnistm(x, rng, backgrounds if backgrounds is not None else load_backgrounds())
        elif s.kind == "invert":
            x = invert(x, rng)
        elif s.kind in CORRUPTIONS:
            x = CORRUPTIONS[s.kind](x, rng, s.param)
        else:
            x = {"rotate": rotate, "angle": angle, "resize": resize, "noise": noise, "blur": blur, "contrast": contrast}[s.kind](
                x, rng, s.param
            )
    return x
