"""jtl.data.decode: every PIL mode written from a known array, decoded, and compared with the
rule's formula computed here in numpy (not with decode's own code)."""

import colorsys

import numpy as np
import pytest
from PIL import Image

import jtl.data as D
from jtl.data.decode import decode_image, to_array
from jtl.errors import DataError

RNG = np.random.default_rng(0)


def u8(shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def scale16(v):
    return np.round(np.asarray(v, np.float64) * 255 / 65535).astype(np.uint8)


def over_white(c, a):
    c, a = np.asarray(c, np.float64), np.asarray(a, np.float64)
    return np.round(c * a / 255 + 255 * (1 - a / 255)).astype(np.uint8)


def luma(rgb):
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.floor(r * 299 / 1000 + g * 587 / 1000 + b * 114 / 1000 + 0.5).astype(np.uint8)


def one_line_error(path, fn, match):
    with pytest.raises(DataError, match=match) as e:
        fn()
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def saved(im, path, **kw):
    im.save(path, **kw)
    return path


# ---------------------------------------------------------------- 16-bit and 32-bit


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    v = np.concatenate([[0, 257, 32768, 65535], RNG.integers(0, 65536, 31)]).astype(np.uint16).reshape(5, 7)
    path = saved(Image.fromarray(v), tmp_path / "a.png")
    assert Image.open(path).mode == "I;16"
    got = decode_image(path, 1)
    assert got.dtype == np.uint8 and got.shape == (5, 7, 1)
    np.testing.assert_array_equal(got[..., 0], scale16(v))
    np.testing.assert_array_equal(got[0, :4, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(decode_image(path), np.repeat(scale16(v)[..., None], 3, -1))


def test_16bit_other_byte_orders(tmp_path):
    v = RNG.integers(0, 65536, (4, 6)).astype(np.uint16)
    path = saved(Image.frombytes("I;16B", (6, 4), v.astype(">u2").tobytes()), tmp_path / "b.tif")
    assert Image.open(path).mode == "I;16B"
    np.testing.assert_array_equal(decode_image(path, 1)[..., 0], scale16(v))
    for mode, dtype in (("I;16L", "<u2"), ("I;16N", "=u2")):
        im = Image.frombytes(mode, (6, 4), v.astype(dtype).tobytes())
        assert im.mode == mode
        np.testing.assert_array_equal(to_array(im, 1)[..., 0], scale16(v))


def test_32bit_integer_in_16bit_range_is_scaled_else_refused(tmp_path):
    v = np.concatenate([[0, 257, 65535], RNG.integers(0, 65536, 9)]).astype(np.int32).reshape(3, 4)
    path = saved(Image.fromarray(v), tmp_path / "i.tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(decode_image(path, 1)[..., 0], scale16(v))
    for bad in (70000, -5):
        w = v.copy()
        w[1, 1] = bad
        path = saved(Image.fromarray(w), tmp_path / f"i{bad}.tif")
        one_line_error(path, lambda: decode_image(path), "mode I")


def test_float_is_refused(tmp_path):
    path = saved(Image.fromarray(RNG.random((3, 4)).astype(np.float32)), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    one_line_error(path, lambda: decode_image(path), "mode F")


# ---------------------------------------------------------------- gray, colour, palettes


def test_bilevel_gray_and_rgb(tmp_path):
    bits = RNG.random((5, 6)) > 0.5
    path = saved(Image.fromarray(bits), tmp_path / "1.png")
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(decode_image(path, 1)[..., 0], bits * 255)

    g = u8((5, 6))
    path = saved(Image.fromarray(g), tmp_path / "l.png")
    np.testing.assert_array_equal(decode_image(path, 1)[..., 0], g)
    np.testing.assert_array_equal(decode_image(path, 3), np.stack([g, g, g], -1))

    rgb = u8((40, 50, 3))
    path = saved(Image.fromarray(rgb), tmp_path / "rgb.png")
    np.testing.assert_array_equal(decode_image(path, 3), rgb)
    got = decode_image(path, 1)[..., 0].astype(int)
    np.testing.assert_array_equal(got, luma(rgb))
    pil = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)  # PIL's fixed-point BT.601
    assert np.abs(got - pil).max() <= 1 and (got != pil).mean() < 0.01
    with pytest.raises(DataError, match="channels"):
        decode_image(path, 4)


def _palette_image(n=5, shape=(4, 6)):
    pal = u8((n, 3))
    idx = RNG.integers(0, n, shape).astype(np.uint8)
    im = Image.frombytes("P", shape[::-1], idx.tobytes())
    im.putpalette(pal.ravel().tolist())
    return im, pal, idx


def test_palette(tmp_path):
    im, pal, idx = _palette_image()
    path = saved(im, tmp_path / "p.png")
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(decode_image(path), pal[idx])


def test_palette_transparency(tmp_path):
    im, pal, idx = _palette_image()
    alpha = np.array([255, 128, 0, 37, 200], np.uint8)
    path = saved(im, tmp_path / "tb.png", transparency=alpha.tobytes())  # one alpha per entry (tRNS)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(decode_image(path), over_white(pal[idx], alpha[idx][..., None]))

    one = np.where(np.arange(5) == 2, 0, 255)  # a single transparent index
    for name in ("ti.png", "ti.gif"):
        path = saved(im, tmp_path / name, transparency=2)
        np.testing.assert_array_equal(decode_image(path), over_white(pal[idx], one[idx][..., None]))

    rgba_pal = Image.frombytes("P", (6, 4), idx.tobytes())
    rgba_pal.putpalette(np.concatenate([pal, alpha[:, None]], 1).ravel().tolist(), rawmode="RGBA")
    np.testing.assert_array_equal(to_array(rgba_pal), over_white(pal[idx], alpha[idx][..., None]))


def test_palette_alpha_mode():
    _, pal, idx = _palette_image()
    a = u8(idx.shape)
    im = Image.frombytes("PA", (6, 4), np.stack([idx, a], -1).tobytes())
    im.putpalette(pal.ravel().tolist())
    assert im.mode == "PA"
    np.testing.assert_array_equal(to_array(im), over_white(pal[idx], a[..., None]))


# ---------------------------------------------------------------- alpha


def test_alpha_composited_over_white(tmp_path):
    la = u8((5, 6, 2))
    la[0, :4, 1] = [0, 255, 128, 1]
    path = saved(Image.frombytes("LA", (6, 5), la.tobytes()), tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    expect = over_white(la[..., :1], la[..., 1:])
    np.testing.assert_array_equal(decode_image(path, 1), expect)
    assert decode_image(path, 1)[0, 0, 0] == 255 and decode_image(path, 1)[0, 1, 0] == la[0, 1, 0]

    rgba = u8((7, 8, 4))
    path = saved(Image.fromarray(rgba), tmp_path / "rgba.png")
    assert Image.open(path).mode == "RGBA"
    np.testing.assert_array_equal(decode_image(path), over_white(rgba[..., :3], rgba[..., 3:]))


def test_premultiplied_alpha():
    for mode, k in (("La", 1), ("RGBa", 3)):
        a = u8((5, 6, 1))
        c = u8((5, 6, k))
        p = np.round(c.astype(float) * a / 255).astype(np.uint8)  # premultiplied store
        im = Image.frombytes(mode, (6, 5), np.concatenate([p, a], -1).tobytes())
        got = to_array(im, k)
        np.testing.assert_array_equal(got, np.minimum(p.astype(int) + 255 - a, 255))
        # the straight-alpha rule on the original colour, up to the store's rounding
        assert np.abs(got.astype(int) - over_white(c, a)).max() <= 1


# ---------------------------------------------------------------- other colour spaces


def test_cmyk_ycbcr_hsv(tmp_path):
    cmyk = u8((5, 6, 4))
    path = saved(Image.frombytes("CMYK", (6, 5), cmyk.tobytes()), tmp_path / "c.tif")
    assert Image.open(path).mode == "CMYK"
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    np.testing.assert_allclose(decode_image(path), (255 - c) * (255 - k) / 255, atol=1)

    ycc = u8((5, 6, 3))
    path = saved(Image.frombytes("YCbCr", (6, 5), ycc.tobytes()), tmp_path / "y.tif")
    assert Image.open(path).mode == "YCbCr"
    y, cb, cr = (ycc[..., i].astype(float) for i in range(3))
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    jfif = np.stack([y + 1.402 * (cr - 128), g, y + 1.772 * (cb - 128)], -1)  # JPEG (JFIF) YCbCr
    np.testing.assert_allclose(decode_image(path), np.clip(jfif, 0, 255), atol=1.01)

    hsv = u8((5, 6, 3))
    expect = np.array([[colorsys.hsv_to_rgb(*(px / 255)) for px in row] for row in hsv.astype(float)]) * 255
    np.testing.assert_allclose(to_array(Image.frombytes("HSV", (6, 5), hsv.tobytes())), expect, atol=1.01)


def _lab_to_srgb(lab):
    """CIELAB (D50, Pillow's bytes: L 0..255, a/b signed) -> sRGB (Bradford to D65)."""
    L = lab[..., 0].astype(float) * 100 / 255
    a, b = lab[..., 1].astype(np.int8).astype(float), lab[..., 2].astype(np.int8).astype(float)
    fy = (L + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * [0.9642, 1.0, 0.8249]
    bradford = np.array([[0.9555766, -0.0230393, 0.0631636],  # D50 -> D65
                         [-0.0282895, 1.0099416, 0.0210077],
                         [0.0122982, -0.0204830, 1.3299098]])
    to_rgb = np.array([[3.2404542, -1.5371385, -0.4985314],  # XYZ (D65) -> linear sRGB
                       [-0.9692660, 1.8760108, 0.0415560],
                       [0.0556434, -0.2040259, 1.0572252]])
    lin = np.clip(xyz @ bradford.T @ to_rgb.T, 0, 1)
    return 255 * np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def test_lab(tmp_path):
    lab = np.stack([RNG.integers(100, 230, (5, 6)), RNG.integers(-12, 13, (5, 6)), RNG.integers(-12, 13, (5, 6))], -1)
    lab[0, 0], lab[0, 1] = (255, 0, 0), (0, 0, 0)  # white, black
    raw = (lab % 256).astype(np.uint8)  # a/b as two's-complement bytes
    path = saved(Image.frombytes("LAB", (6, 5), raw.tobytes()), tmp_path / "lab.tif")
    assert Image.open(path).mode == "LAB"
    got, expect = decode_image(path), _lab_to_srgb(raw)
    assert expect.reshape(-1, 3)[2:].min() > 30  # away from sRGB's toe, where lcms's 8-bit tables drift
    np.testing.assert_allclose(got, expect, atol=3)
    assert got[0, 0].min() >= 253 and got[0, 1].max() <= 2


# ---------------------------------------------------------------- frames, orientation, failures


def test_first_frame(tmp_path):
    frames = [u8((4, 5)) for _ in range(3)]
    for name in ("m.gif", "m.tif"):
        path = tmp_path / name
        Image.fromarray(frames[0]).save(path, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]])
        assert Image.open(path).n_frames == 3
        np.testing.assert_array_equal(decode_image(path, 1)[..., 0], frames[0])


@pytest.mark.parametrize("orientation,k", [(6, -1), (8, 1)])  # display turns 6: 90 clockwise, 8: counter-clockwise
def test_exif_orientation(tmp_path, orientation, k):
    src = u8((4, 7, 3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = saved(Image.fromarray(src), tmp_path / "e.png", exif=exif)
    assert Image.open(path).getexif()[0x0112] == orientation
    got = decode_image(path)
    assert got.shape == (7, 4, 3)
    np.testing.assert_array_equal(got, np.rot90(src, k=k))


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    one_line_error(garbage, lambda: decode_image(garbage), r"not a readable image \(UnidentifiedImageError")
    cut = saved(Image.fromarray(u8((64, 64, 3))), tmp_path / "cut.png")
    cut.write_bytes(cut.read_bytes()[:-2000])
    one_line_error(cut, lambda: decode_image(cut), "not a readable image")
    one_line_error(tmp_path / "missing.png", lambda: decode_image(tmp_path / "missing.png"), "not a readable image")


# ---------------------------------------------------------------- through an image folder


def test_folder_16bit_png_is_not_white(tmp_path):
    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "b").mkdir()
    v = RNG.integers(0, 65536, (6, 9)).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / "f" / "a" / "x.png")
    Image.fromarray(u8((6, 9, 3))).save(tmp_path / "f" / "b" / "y.png")
    src = D.load(f"folder:{tmp_path / 'f'}", "all", val_fraction=0)
    img = src[src.files.index(str(tmp_path / "f" / "a" / "x.png"))]["image"]
    assert img.shape == (6, 9, 3) and (img < 255).any()
    np.testing.assert_array_equal(img, np.repeat(scale16(v)[..., None], 3, -1))


def test_folder_extensions_and_refusal(tmp_path):
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    rgb = {ext: u8((5, 6, 3)) for ext in (".bmp", ".tif", ".tiff", ".webp")}
    for ext, x in rgb.items():
        Image.fromarray(x).save(root / "a" / f"x{ext}", **({"lossless": True} if ext == ".webp" else {}))
    g = u8((5, 6))
    Image.fromarray(g).save(root / "a" / "x.gif")
    Image.fromarray(RNG.random((5, 6)).astype(np.float32)).save(root / "a" / "zz_float.tif")
    name = f"folder:{root}"
    src = D.load(name, "all", val_fraction=0)
    assert len(src) == 6
    for ext, x in rgb.items():
        np.testing.assert_array_equal(src[src.files.index(str(root / "a" / f"x{ext}"))]["image"], x)
    np.testing.assert_array_equal(src[src.files.index(str(root / "a" / "x.gif"))]["image"], np.stack([g] * 3, -1))
    bad = src.files.index(str(root / "a" / "zz_float.tif"))
    with pytest.raises(DataError, match="zz_float.tif.*mode F"):
        src[bad]
    skipping = D.load(name, "all", val_fraction=0, on_error="skip")
    with pytest.warns(UserWarning, match="zz_float.tif"):
        assert skipping[bad]["image"].dtype == np.uint8
