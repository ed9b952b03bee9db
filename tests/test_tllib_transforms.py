"""Transfer-Learning-Library's (TLlib) image transforms in jtl's pipeline: ``data.resize`` (every image to
R x R first), ``data.eval_crop="center"`` and the fixed ``center_crop`` / ``random_crop`` train crops.

Reference: real torchvision 0.14 on PIL images (Debian's python3-torchvision, in a subprocess), the
transforms TLlib composes in ``examples/domain_adaptation/image_classification/utils.py``
(``get_val_transform('default')``: ``ResizeImage(256)``, ``CenterCrop(224)``, ``ToTensor``,
``Normalize``). TLlib's ``ResizeImage(256)`` is ``img.resize((256, 256))``: PIL's default filter,
bicubic; the reference checks that this equals torchvision's ``Resize((256, 256), BICUBIC)`` there.

Tolerances. The uint8 pixels are compared exactly. After normalisation, 2e-6: torch computes
``(x / 255 - m) / s`` and jtl ``(x * (1 / 255) - m) / s`` in float32, which differ by rounding
only (values up to 2.7, float32 spacing 2.4e-7 there). One known difference is not rounding:
the reference's Pillow (9.4) resamples horizontally then vertically; the venv's (13) resamples
vertically first when the height shrinks much more than the width (python-pillow/Pillow#9549),
and the uint8 intermediate between the passes rounds differently (bicubic: up to 9 levels on
random pixels). For the tall image the reference also gives the vertical-first order (two
single-axis resizes, which both Pillows compute identically), and jtl must equal one order exactly.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jtl.data as D
from jtl.config import load_config
from jtl.data import augment
from jtl.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (H, W): wide, narrow, square, upsampled, tall (its height shrinks 2x, its width 1.3x: Pillow#9549)
SHAPES = [(300, 400), (180, 97), (256, 256), (120, 150), (517, 333)]
TALL = 4
BASE = "182410e3be28fb5a9a759c1645eff13766b6acd2"  # the last commit before data.resize / data.eval_crop

REFERENCE = textwrap.dedent('''
    import sys
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms as T

    src = np.load(sys.argv[1])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    resize = T.Resize((256, 256), interpolation=T.InterpolationMode.BICUBIC)
    evaluate = T.Compose([resize, T.CenterCrop(224)])
    train = T.Compose([resize, T.RandomResizedCrop(224, scale=(1.0, 1.0), ratio=(1.0, 1.0))])
    out = {}
    for k in src.files:
        im = Image.fromarray(src[k])
        tllib = np.asarray(im.resize((256, 256)))  # TLlib's ResizeImage(256): PIL's default filter
        assert (np.asarray(resize(im)) == tllib).all(), "torchvision's bicubic Resize is not TLlib's ResizeImage"
        out[k + "_resized"] = tllib
        out[k + "_eval"] = np.asarray(evaluate(im))
        out[k + "_eval_norm"] = tensor(evaluate(im)).permute(1, 2, 0).numpy()
        out[k + "_train"] = np.asarray(train(im))
        w, h = im.size  # the other pass order: vertical, then horizontal
        vfirst = im.resize((w, 256), Image.BICUBIC).resize((256, 256), Image.BICUBIC)
        out[k + "_eval_vfirst"] = np.asarray(T.CenterCrop(224)(vfirst))
        out[k + "_train_vfirst"] = np.asarray(vfirst.resize((224, 224), Image.BILINEAR))
    np.savez(sys.argv[2], **out)
''')


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SHAPES]


def _source(images, name="tllib"):
    """A source of differently sized images (read one by one, as image folders are)."""
    info = D.Info(name, tuple("abcde"), (None, None, 3), ("train",))
    return D.Source(name, "train", info, lambda i: images[i], np.arange(len(images)), np.arange(len(images)) % 5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, torchvision_python):
    d = tmp_path_factory.mktemp("tllib_ref")
    np.savez(d / "in.npz", **{f"img{i}": x for i, x in enumerate(_images())})
    (d / "ref.py").write_text(REFERENCE)
    subprocess.run([torchvision_python, str(d / "ref.py"), str(d / "in.npz"), str(d / "out.npz")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "2"})
    return dict(np.load(d / "out.npz"))


def _batch(images, *, train, **kw):
    n = len(images)
    it = D.make_iterator(_source(images), batch_size=n, seed=0, train=train, image_size=224, channels=3,
                         normalize=(MEAN, STD), with_index=True, num_threads=1, **kw)
    b = next(iter(it))
    order = np.argsort(b["index"])  # a train batch is shuffled
    return np.asarray(b["image"])[order]


def _one_order(ours, ref, key, i):
    """Equal to the reference's pass order (or, for the tall image, to either order)."""
    ok = [np.array_equal(ours, ref[f"img{i}_{key}"])]
    if i == TALL:
        ok.append(np.array_equal(ours, ref[f"img{i}_{key}_vfirst"]))
    return any(ok)


def test_eval_is_tllibs_resize_and_centre_crop(reference):
    images = _images()
    pixels = _batch(images, train=False, resize=256, eval_crop="center", output="uint8")
    floats = _batch(images, train=False, resize=256, eval_crop="center")
    for i in range(len(images)):
        assert _one_order(pixels[i], reference, "eval", i), SHAPES[i]
        if i != TALL:
            np.testing.assert_allclose(floats[i], reference[f"img{i}_eval_norm"], rtol=0, atol=2e-6)
    # the tall image: the two pass orders do differ, so the check above can tell them apart
    assert not np.array_equal(reference[f"img{TALL}_eval"], reference[f"img{TALL}_eval_vfirst"])


def test_train_crop_of_the_resized_image(reference):
    """scale = ratio = (1, 1): the random resized crop of the 256 x 256 image is all of it, resampled
    to 224 (torchvision's RandomResizedCrop, bilinear); ``center_crop`` without flip is the eval view."""
    images = _images()
    whole = (("crop", {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}),)
    pixels = _batch(images, train=True, resize=256, augment=whole, output="uint8")
    centre = _batch(images, train=True, resize=256, augment=("center_crop",), output="uint8")
    for i in range(len(images)):
        assert _one_order(pixels[i], reference, "train", i), SHAPES[i]
        assert _one_order(centre[i], reference, "eval", i), SHAPES[i]


def test_random_crop_is_a_window_of_the_resized_image(reference):
    """``random_crop`` (TLlib's 'ran.crop'): each output is a 224 window of the 256 x 256 image at an
    integer offset; over 40 draws the offsets spread over 0..32."""
    image = _images()[0]
    resized = reference["img0_resized"]
    it = D.make_iterator(_source([image] * 8), batch_size=8, seed=3, train=True, image_size=224, resize=256,
                         augment=("random_crop",), output="uint8", num_threads=1)
    offsets = []
    for _, b in zip(range(5), it):
        for x in np.asarray(b["image"]):
            hits = [(t, l) for t in range(33) for l in range(33)
                    if np.array_equal(x[:4, :4], resized[t:t + 4, l:l + 4])]
            assert len(hits) == 1
            (t, l), = hits
            assert np.array_equal(x, resized[t:t + 224, l:l + 224])
            offsets.append((t, l))
    tops, lefts = np.array(offsets).T
    assert tops.min() < 8 and tops.max() > 24 and lefts.min() < 8 and lefts.max() > 24, offsets


def _transitions(x, axis):
    """Black/white changes along the middle row (axis 1) or column (axis 0) of each image."""
    mid = x.shape[1 + (1 - axis)] // 2
    line = (x[:, mid, :, 0] if axis == 1 else x[:, :, mid, 0]) > 127
    return np.abs(np.diff(line.astype(int), axis=1)).sum(1)


def test_crops_come_from_the_resized_image():
    """A 256 x 512 checkerboard of 32 px squares, random resized crops of a quarter of the area, square:
    cut from the 256 x 256 resized image (squares squashed to 16 x 32), the cells come out twice as tall as
    wide; cut from the original they stay square."""
    yy, xx = np.mgrid[:256, :512]
    board = np.repeat((((yy // 32 + xx // 32) % 2) * 255).astype(np.uint8)[..., None], 3, -1)
    quarter = (("crop", {"scale": (0.25, 0.25), "ratio": (1.0, 1.0)}),)
    ratio = {}
    for resize in (256, 0):
        it = D.make_iterator(_source([board] * 16), batch_size=16, seed=1, train=True, image_size=64,
                             resize=resize, augment=quarter, output="uint8", num_threads=1)
        x = np.asarray(next(iter(it))["image"])
        ratio[resize] = _transitions(x, 1).mean() / _transitions(x, 0).mean()
    assert ratio[256] > 1.7 and 0.75 < ratio[0] < 1.3, ratio


def test_res_mode_is_one_bicubic_resize():
    """TLlib's 'res.' (``resize = image_size``, no crop): one bicubic resize, as PIL's default filter."""
    images = [np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)] * 2
    out = D.make_iterator(_source(images), batch_size=2, seed=0, train=False, image_size=28, resize=28,
                          output="uint8", num_threads=1)
    want = np.asarray(Image.fromarray(images[0]).resize((28, 28)))
    assert np.array_equal(np.asarray(next(iter(out))["image"])[0], want)


DUMP = textwrap.dedent('''
    import sys
    import numpy as np
    import jtl.data as D

    def dump(out):
        rng = np.random.default_rng(5)
        varied = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 30), (25, 50), (33, 33)] * 4]
        fixed = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
        info3 = D.Info("v", tuple("abc"), (None, None, 3), ("train",))
        info1 = D.Info("f", tuple("abc"), (28, 28, 1), ("train",))
        sources = {"varied": D.Source("v", "train", info3, lambda i: varied[i], np.arange(12), np.arange(12) % 3),
                   "fixed": D.Source("f", "train", info1, fixed, np.arange(12), np.arange(12) % 3)}
        res = {}
        for name, src in sources.items():
            for train, aug in ((True, ("crop", "flip", "jitter")), (True, ("flip",)), (False, ())):
                for channels in (1, 3):
                    it = D.make_iterator(src, batch_size=4, seed=2, train=train, image_size=24, channels=channels,
                                         augment=aug, normalize="imagenet", num_threads=1)
                    for k, b in zip(range(3), it):
                        res[f"{name}-{train}-{len(aug)}-{channels}-{k}"] = np.asarray(b["image"])
        np.savez(out, **res, module=np.array(D.__file__))

    if __name__ == "__main__":
        dump(sys.argv[1])
''')


def test_defaults_unchanged(tmp_path):
    """With ``resize`` and ``eval_crop`` off, train and eval batches are bit-identical to the pipeline
    of the commit before they existed (its jtl/ from git, run in a subprocess)."""
    base = tmp_path / "base"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASE, "jtl"], capture_output=True)
    if archive.returncode:
        pytest.skip(f"needs the git history (commit {BASE[:7]}): {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    (tmp_path / "dump.py").write_text(DUMP)
    subprocess.run([sys.executable, str(tmp_path / "dump.py"), str(tmp_path / "old.npz")], check=True,
                   env={**os.environ, "PYTHONPATH": str(base), "OMP_NUM_THREADS": "2"}, cwd=tmp_path)
    namespace = {}
    exec(compile(DUMP, "dump.py", "exec"), namespace)  # this checkout's jtl
    namespace["dump"](tmp_path / "new.npz")
    old, new = np.load(tmp_path / "old.npz"), np.load(tmp_path / "new.npz")
    assert str(old["module"]).startswith(str(base)) and str(new["module"]).startswith(str(ROOT))
    assert sorted(old.files) == sorted(new.files) and len(old.files) == 37
    for k in set(old.files) - {"module"}:
        assert old[k].dtype == new[k].dtype and np.array_equal(old[k], new[k]), k


def test_geometry_of_configs_and_recorded_runs():
    c = load_config(str(ROOT / "configs/office31.py") + ":dann,task=A2W", [])
    assert D.geometry(c.data) == {"image_size": 224, "resize": 256, "eval_crop": "center"}
    assert tuple(c.data.augment) == ("crop", "flip")
    visda = load_config(str(ROOT / "configs/visda2017.py") + ":mdd", [])
    assert (visda.data.resize, tuple(visda.data.augment), visda.data.eval_crop) == (256, ("center_crop", "flip"),
                                                                                    "center")
    digits = load_config(str(ROOT / "configs/digits_tllib.py") + ":dann,task=U2M", [])  # 'res.', --no-hflip
    assert (digits.data.resize, tuple(digits.data.augment), digits.data.eval_crop) == (28, (), "none")
    # a run recorded before data.resize existed reads as off
    assert D.geometry({"mean": [0.5], "std": [0.5], "image_size": 32, "channels": 1}) == {
        "image_size": 32, "resize": 0, "eval_crop": "none"}


def test_predict_sees_the_eval_geometry(tmp_path, reference):
    """``jtl predict``'s image files go through the same resize and centre crop as the eval pipeline."""
    from jtl.train.commands import load_images

    images = _images()[:4]
    paths = []
    for i, x in enumerate(images):
        Image.fromarray(x).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    norm = {"mean": list(MEAN), "std": list(STD), "image_size": 224, "resize": 256, "eval_crop": "center",
            "channels": 3}
    got = load_images(paths, norm)
    for i in range(len(images)):
        assert np.array_equal(got[i], reference[f"img{i}_eval"])


@pytest.mark.parametrize("override,words", [
    ("data.resize=100", "data.resize must be 0 (off) or at least data.image_size=224"),
    ("data.eval_crop=middle", "data.eval_crop must be none or center"),
    ("data.augment=('crop','random_crop')", "augment takes one crop"),
])
def test_bad_values_are_one_line(override, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        load_config(str(ROOT / "configs/office31.py") + ":dann", [override])
    assert "\n" not in str(e.value)


def test_crop_larger_than_the_image_is_one_line():
    small = [np.zeros((20, 30, 3), np.uint8)] * 2
    it = D.make_iterator(_source(small), batch_size=2, seed=0, train=False, image_size=24, eval_crop="center",
                         num_threads=1)
    with pytest.raises(DataError, match="smaller than the 24 px crop; set data.resize"):
        next(iter(it))
    with pytest.raises(DataError, match="eval_crop must be one of none, center"):
        D.make_iterator(_source(small), batch_size=2, seed=0, train=False, image_size=24, eval_crop="centre")
    assert augment.parse(("flip", "random_crop")) == {"flip": {}, "random_crop": {}}


def test_call_sites_pass_the_geometry(reference):
    """The trainer's iterator and normalisation record (``jtl.train.tasks``) and the test-time stream
    (``jtl eval --adapt``) read ``data.resize`` / ``data.eval_crop`` from the config or the run's record."""
    from jtl.config import defaults
    from jtl.train import tasks
    from jtl.tta import stream

    images = _images()[:4]
    cfg = defaults()
    cfg.data.image_size, cfg.data.resize, cfg.data.eval_crop = 224, 256, "center"
    cfg.data.augment, cfg.batch_size = ("center_crop",), 4
    it = tasks.train_iterator(cfg, _source(images), (MEAN, STD))
    norm = tasks.normalization_of(cfg, it)
    assert (norm["resize"], norm["eval_crop"], norm["image_size"]) == (256, "center", 224)
    batch = next(iter(it))
    batches, _ = stream.test_stream(_source(images), batch_size=4, normalization=norm)
    x, labels = next(batches)
    for i in range(4):
        want = reference[f"img{i}_eval"]
        assert any(np.array_equal(t, want) for t in np.asarray(batch["image"]))  # a train batch is shuffled
        assert np.array_equal(x[i], want)
