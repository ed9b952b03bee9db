"""``decode_image(path, channels=3) -> uint8 (H, W, channels)``: decode faithfully or refuse.

Rules, in order (c a colour value, a an alpha value, both 0..255; v a 16-bit value):

1. The first frame of a multi-frame file (GIF, TIFF, ...).
2. EXIF orientation applied (``PIL.ImageOps.exif_transpose``).
3. Modes to uint8 values:

   - ``1`` (bilevel): 0 / 255.  ``L``, ``RGB``: as stored.  ``RGBX``: padding dropped.
   - ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and ``I`` whose values all lie in 0..65535:
     ``round(v * 255 / 65535)`` in numpy (PIL's own convert clips to 255: all white).
     ``v * 255 / 65535 = v / 257`` is never a half, so the rounding has no ties.
   - ``I`` with a value outside 0..65535, and ``F`` (float): refused, their range is
     unknown (float files use 0..1, 0..255, 0..65535 or physical units alike).
   - ``P`` palettes expanded to RGB; with transparency (``tRNS``, RGBA palette), and
     ``PA``, to RGBA first (PIL's palette lookup).
   - Alpha (``LA``, ``RGBA``, ``PA``, transparent ``P``) composited over white:
     ``out = round(c a / 255 + 255 (1 - a / 255)) = (c a + 255 (255 - a) + 127) // 255``
     (the numerator is an integer, so no ties).  Premultiplied alpha (``La``, ``RGBa``)
     stores ``p = c a / 255``, so over white ``out = min(p + 255 - a, 255)``, exact, no
     un-premultiplying.
   - ``CMYK``, ``YCbCr``, ``LAB`` (CIELAB D50 to sRGB), ``HSV``: PIL's conversion to RGB.
   - Any other mode: refused.

4. Channels: gray to 3 by repetition; RGB to 1 by ITU-R BT.601 luma (as PIL's ``L``),
   ``L = floor((299 R + 587 G + 114 B) / 1000 + 1/2)``, exact integers (gray stays gray).

PIL itself reduces 16-bit-per-channel colour files (RGB/RGBA PNG or TIFF) to 8 bits by
keeping the high byte (``v >> 8``, within 1 of ``round(v / 257)``) before this module sees
them. A file PIL cannot open or decode raises ``DataError("<path>: not a readable image
(<ExceptionType>: ...)")``; a refused mode names the mode and what to convert it to.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from jtl.errors import DataError

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA = ("LA", "RGBA")
PREMULTIPLIED = ("La", "RGBa")
VIA_PIL_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")


def decode_image(path, channels: int = 3) -> np.ndarray:
    """The first frame of image file ``path`` as uint8 ``(H, W, channels)`` (rules above)."""
    if channels not in (1, 3):
        raise DataError(f"{path}: channels must be 1 or 3, got {channels!r}")
    try:
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{path}: not a readable image ({type(e).__name__}{': ' + msg if msg else ''})") from None
    return to_array(im, channels, path)


def to_array(im: Image.Image, channels: int = 3, path="<image>") -> np.ndarray:
    """A loaded PIL image as uint8 ``(H, W, channels)``; ``path`` only names it in errors."""
    x = _values(im, path)
    if x.shape[-1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    rgb = x.astype(np.int32)
    return ((299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000).astype(np.uint8)[..., None]


def _values(im: Image.Image, path) -> np.ndarray:
    """uint8 ``(H, W, 1)`` for gray, ``(H, W, 3)`` for colour."""
    mode = im.mode
    if mode == "P":
        has_alpha = "transparency" in im.info or (im.palette is not None and "A" in im.palette.mode)
        im, mode = (im.convert("RGBA"), "RGBA") if has_alpha else (im.convert("RGB"), "RGB")
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode in VIA_PIL_RGB:
        im, mode = im.convert("RGB"), "RGB"
    x = np.asarray(im)
    if mode == "1":
        return np.where(x, 255, 0).astype(np.uint8)[..., None]
    if mode in ("L", "RGB"):
        return x.reshape(x.shape[:2] + (-1,))
    if mode in SIXTEEN_BIT or mode == "I":
        v = x.astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise DataError(
                f"{path}: 32-bit integer image (mode I) with values {v.min()}..{v.max()} outside 0..65535 has no known "
                "range; save it as 8- or 16-bit"
            )
        return ((v * 255 + 32767) // 65535).astype(np.uint8)[..., None]
    if mode in ALPHA or mode in PREMULTIPLIED:
        c, a = x[..., :-1].astype(np.int32), x[..., -1:].astype(np.int32)
        if mode in ALPHA:
            return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        return np.minimum(c + 255 - a, 255).astype(np.uint8)
    if mode == "F":
        raise DataError(f"{path}: floating-point image (mode F) has no known value range; save it as 8- or 16-bit")
    raise DataError(f"{path}: unsupported image mode {mode!r}; save it as RGB, gray (L) or 16-bit gray")
