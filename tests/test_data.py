"""jtl.data on small data the tests make: a fake Fashion-MNIST (IDX files), digits, folders, tfds mocks."""

import argparse
import gzip
import json
import warnings

import numpy as np
import pytest
from PIL import Image

import jtl.data as D
from jtl.data import augment, cli, shifts
from jtl.errors import DataError

N_TRAIN, N_TEST = 300, 200


def _write_idx(path, arr):
    """IDX ubyte: magic 0x00000800 | ndim, big-endian dims, then bytes (written independently of jtl)."""
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """A fake Fashion-MNIST in IDX files; JTL_DATA_DIR and JTL_FASHION_MNIST_DIR point at tmp dirs."""
    raw = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(123)
    data = {}
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", labels)
        data[split] = (images, labels)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTL_FASHION_MNIST_DIR", str(raw))
        mp.setenv("JTL_DATA_DIR", str(tmp_path_factory.mktemp("jtl_data")))
        yield data


def _hashes(images):
    return {np.ascontiguousarray(x).tobytes() for x in images}


# ---------------------------------------------------------------- names


def test_name_grammar():
    sp = D.parse_name("fashion_mnist:mnistm+noise@2#7")
    assert (sp.base, [str(s) for s in sp.shifts], sp.shift_seed) == ("fashion_mnist", ["mnistm", "noise@2"], 7)
    assert D.parse_name("folder:/a/b:c").base == "/a/b:c"
    assert D.parse_name("tfds:domainnet/real:2.0.0").base == "domainnet/real:2.0.0"
    for bad in ("mnist:rotate@30", "kmnist", "fashion_mnist:noise@6", "fashion_mnist:wobble", "fashion_mnist:invert@2",
                "digits:blur#x"):
        with pytest.raises(DataError):
            D.parse_name(bad)


def test_info_shapes_without_building():
    assert D.info("fashion_mnist").image_shape == (28, 28, 1)
    assert D.info("fashion_mnist:mnistm+resize@14").image_shape == (14, 14, 3)
    assert D.num_classes("fashion_mnist", classes=(5, 6, 7, 8, 9)) == 5
    assert D.info("digits", classes=(3, 1)).class_names == ("3", "1")


# ---------------------------------------------------------------- builders


def test_fashion_mnist_from_local_files(fake):
    for split, raw in (("train", "train"), ("test", "t10k")):
        src = D.load("fashion_mnist", split)
        images, labels = fake[raw]
        assert len(src) == len(labels)
        batch = src.getitems(np.arange(len(src)))
        np.testing.assert_array_equal(batch["image"][..., 0], images)
        np.testing.assert_array_equal(batch["label"], labels)
        ex = src[len(src) - 1]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 1)
        assert ex["label"].dtype == np.int32 and int(ex["label"]) == labels[-1]


def test_fashion_mnist_offline_error(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("JTL_FASHION_MNIST_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))

    def offline(self, *a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        D.load("fashion_mnist", "train")


def test_digits_split_by_seed(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    ref = load_digits()
    parts = {s: D.load("digits", s, seed=0) for s in ("train", "val", "test")}
    idx = [parts[s].index for s in parts]
    assert sum(map(len, idx)) == 1797 and len(np.unique(np.concatenate(idx))) == 1797
    assert len(parts["train"]) == pytest.approx(0.6 * 1797, abs=10)
    for s, src in parts.items():
        b = src.getitems(np.arange(len(src)))
        np.testing.assert_array_equal(b["image"][..., 0], np.round(ref.images[src.index] * 255 / 16).astype(np.uint8))
        np.testing.assert_array_equal(b["label"], ref.target[src.index])
        assert set(b["label"]) == set(range(10))  # stratified
    assert np.array_equal(D.load("digits", "train", seed=0).index, parts["train"].index)
    assert not np.array_equal(D.load("digits", "train", seed=1).index, parts["train"].index)


def test_classes_and_limit(fake):
    src = D.load("fashion_mnist", "train", classes=(7, 5, 9))
    raw_labels = fake["train"][1]
    assert set(src.labels) == {0, 1, 2}
    np.testing.assert_array_equal(np.asarray([7, 5, 9])[src.labels], raw_labels[src.index])
    assert len(src) == np.isin(raw_labels, [5, 7, 9]).sum()
    assert src.info.class_names == ("Sneaker", "Sandal", "Ankle boot")
    few = D.load("fashion_mnist", "train", classes=(7, 5, 9), limit=10, seed=3)
    assert len(few) == 10 and sorted(np.bincount(few.labels)) == [3, 3, 4]
    assert np.array_equal(few.index, D.load("fashion_mnist", "train", classes=(7, 5, 9), limit=10, seed=3).index)
    assert not np.array_equal(few.index, D.load("fashion_mnist", "train", classes=(7, 5, 9), limit=10, seed=4).index)
    with pytest.raises(DataError):
        D.load("fashion_mnist", "train", limit=10**6)
    with pytest.raises(DataError):
        D.load("fashion_mnist", "train", classes=(3, 3))
    with pytest.raises(DataError, match="val_fraction"):
        D.load("fashion_mnist", "val")
    val = D.load("fashion_mnist", "val", val_fraction=0.1)
    rest = D.load("fashion_mnist", "train", val_fraction=0.1)
    assert len(val) == 30 and len(rest) == N_TRAIN - 30 and not set(val.index) & set(rest.index)


# ---------------------------------------------------------------- shifts


def _all_bytes(name, monkeypatch, data_dir):
    monkeypatch.setenv("JTL_DATA_DIR", str(data_dir))
    src = D.load(name, "all")
    return src.getitems(np.arange(len(src)))["image"].tobytes()


def test_shift_same_seed_same_bytes(fake, tmp_path, monkeypatch):
    name = "fashion_mnist:mnistm+rotate@20+noise@2"
    a = _all_bytes(name + "#5", monkeypatch, tmp_path / "a")
    b = _all_bytes(name + "#5", monkeypatch, tmp_path / "b")  # built again from scratch
    c = _all_bytes(name + "#6", monkeypatch, tmp_path / "a")
    assert a == b and a != c


def test_shift_images_come_from_held_out_split(fake):
    train_images, test_images = _hashes(fake["train"][0][..., None]), _hashes(fake["t10k"][0][..., None])
    seen = []
    for split in ("train", "test"):
        src = D.load("fashion_mnist:invert", split)
        pre = 255 - src.getitems(np.arange(len(src)))["image"]
        assert _hashes(pre) <= test_images and not _hashes(pre) & train_images
        np.testing.assert_array_equal(src.labels, fake["t10k"][1][src.index])
        seen.append(src.index)
    assert len(seen[0]) == len(seen[1]) == N_TEST // 2 and not set(seen[0]) & set(seen[1])


def test_digits_shift_disjoint_from_digits_train(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    ref = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    for seed in (0, 1):
        train = set(D.load("digits", "train", seed=seed).index)
        for split in ("train", "test"):
            tgt = D.load("digits:invert", split, seed=seed)
            np.testing.assert_array_equal(255 - tgt.getitems(np.arange(len(tgt)))["image"][..., 0], ref[tgt.index])
            assert not train & set(tgt.index)


def test_shift_formulas(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 12, 12, 1), dtype=np.uint8)
    bg = tmp_path / "bg"
    bg.mkdir()
    Image.fromarray(np.full((40, 50, 3), (10, 200, 30), np.uint8)).save(bg / "flat.png")
    y = shifts.apply(x, shifts.parse_shifts("mnistm"), 0, shifts.load_backgrounds(str(bg)))
    np.testing.assert_array_equal(y, np.abs(np.array([10, 200, 30]) - x.astype(int)).astype(np.uint8))
    y = shifts.apply(x, shifts.parse_shifts("contrast@2"), 0)
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, np.clip((x - m) * 0.5 + m, 0, 255), atol=0.51)
    flat = np.full((2, 12, 12, 1), 77, np.uint8)
    assert np.array_equal(shifts.apply(flat, shifts.parse_shifts("blur@5"), 0), flat)
    noisy = [shifts.apply(flat, shifts.parse_shifts(f"noise@{s}"), 0).astype(float).std() for s in (1, 5)]
    assert noisy[0] == pytest.approx(0.04 * 255, rel=0.2) and noisy[1] == pytest.approx(0.10 * 255, rel=0.2)
    assert shifts.apply(x, shifts.parse_shifts("resize@5"), 0).shape == (6, 5, 5, 1)


# ---------------------------------------------------------------- folders


def _folder(root, classes=("cat", "dog", "owl"), per_class=10):
    rng = np.random.default_rng(0)
    pixels = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (16 + i, 20, 3), dtype=np.uint8)
            path = root / c / f"{i:02d}.png"
            Image.fromarray(img).save(path)
            pixels[str(path)] = img
    return pixels


def test_image_folder(tmp_path):
    pixels = _folder(tmp_path / "f")
    name = f"folder:{tmp_path / 'f'}"
    train, val = D.load(name, "train", seed=1), D.load(name, "val", seed=1)
    assert (len(train), len(val)) == (24, 6) and not set(train.files) & set(val.files)
    assert sorted(np.bincount(val.labels)) == [2, 2, 2]
    for i in range(len(val)):
        ex = val[i]
        np.testing.assert_array_equal(ex["image"], pixels[val.files[i]])
        assert val.info.class_names[ex["label"]] in val.files[i]
    assert set(D.load(name, "val", seed=2).files) != set(val.files)
    it = D.make_iterator(train, batch_size=8, seed=0, image_size=24, normalize=None)
    assert next(it)["image"].shape == (8, 24, 24, 3)


def test_image_folder_corrupt_file(tmp_path):
    _folder(tmp_path / "f")
    bad = tmp_path / "f" / "dog" / "zz_bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    name = f"folder:{tmp_path / 'f'}"
    with pytest.raises(DataError, match="zz_bad.jpg"):
        D.load(name, "all", on_error="raise")
    with pytest.warns(UserWarning, match="zz_bad.jpg"):
        src = D.load(name, "all", on_error="skip")
    assert len(src) == 30 and str(bad) not in src.files


def test_image_folder_truncated_file(tmp_path):
    _folder(tmp_path / "f", classes=("a", "b"), per_class=3)
    (tmp_path / "f" / "b" / "01.png").unlink()
    path = tmp_path / "f" / "b" / "01.jpg"
    buf = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(buf).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-3000])  # header intact (opens), scan data cut (fails to decode)
    name = f"folder:{tmp_path / 'f'}"
    src = D.load(name, "all", on_error="raise")
    pos = src.files.index(str(path))
    with pytest.raises(DataError, match="01.jpg"):
        src[pos]
    skipping = D.load(name, "all", on_error="skip")
    with pytest.warns(UserWarning, match="01.jpg"):
        ex = skipping[pos]
    np.testing.assert_array_equal(ex["image"], skipping[pos + 1]["image"])  # the next readable one


# ---------------------------------------------------------------- tfds catalog


def test_tfds_catalog_mock(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=20):
        src = D.load("tfds:cifar10", "train")
        assert len(src) == 20 and src.info.num_classes == 10
        ex = src[3]
        assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8 and 0 <= ex["label"] < 10
        val = D.load("tfds:cifar10", "val", val_fraction=0.25)
        assert 3 <= len(val) <= 7 and not set(val.index) & set(D.load("tfds:cifar10", "train", val_fraction=0.25).index)
        batch = next(D.make_iterator(src, batch_size=4, seed=0, image_size=16))
        assert batch["image"].shape == (4, 16, 16, 3)
        with pytest.raises(DataError):
            D.load("tfds:no_such_dataset_xyz", "train")


# ---------------------------------------------------------------- pipeline


def _indexed_source(n, shape=(6, 6, 1)):
    """A source whose label is its position: batches reveal which examples they hold."""
    images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    info = D.Info("indexed", tuple(map(str, range(n))), shape, ("train",))
    return D.Source("indexed", "train", info, images, np.arange(n), np.arange(n)), images


def test_train_epochs_shards_and_determinism():
    src, _ = _indexed_source(64)
    it = D.make_iterator(src, batch_size=8, seed=0, augment=(), normalize=None)
    labels = np.concatenate([next(it)["label"] for _ in range(16)])
    assert sorted(labels[:64]) == list(range(64)) and sorted(labels[64:]) == list(range(64))
    assert not np.array_equal(labels[:64], labels[64:]) and not np.array_equal(labels[:64], np.arange(64))
    again = D.make_iterator(src, batch_size=8, seed=0, augment=(), normalize=None)
    assert np.array_equal(np.concatenate([next(again)["label"] for _ in range(8)]), labels[:64])
    other = D.make_iterator(src, batch_size=8, seed=1, augment=(), normalize=None)
    assert not np.array_equal(np.concatenate([next(other)["label"] for _ in range(8)]), labels[:64])
    per = []
    for p in range(2):
        shard = D.make_iterator(src, batch_size=8, seed=0, process_index=p, process_count=2, augment=())
        per.append(set(np.concatenate([next(shard)["label"] for _ in range(4)])))  # one epoch of the shard
    assert per[0] | per[1] == set(range(64)) and not per[0] & per[1]


def test_eval_pass_is_ordered_padded_and_masked():
    src, images = _indexed_source(21)
    got = []
    for p in range(2):
        it = D.make_iterator(src, batch_size=4, seed=0, train=False, normalize=None, process_index=p, process_count=2)
        batches = list(it)
        assert len(batches) == len(it) == 3  # ceil(21 / 8) global steps, same on every process
        for b in batches:
            assert b["image"].shape == (4, 6, 6, 1) and b["mask"].dtype == bool
            got += list(b["label"][b["mask"]])
            kept = b["label"][b["mask"]]
            np.testing.assert_allclose(b["image"][b["mask"]] * 255, images[kept], atol=1e-3)
    assert sorted(got) == list(range(21))
    single = np.concatenate([b["label"][b["mask"]] for b in D.make_iterator(src, batch_size=4, seed=0, train=False)])
    assert np.array_equal(single, np.arange(21))
    dropped = list(D.make_iterator(src, batch_size=4, seed=0, train=False, drop_remainder=True))
    assert len(dropped) == 5 and all(b["mask"].all() for b in dropped)


def test_restored_iterator_yields_the_same_batches():
    src, _ = _indexed_source(50, (10, 10, 3))
    kw = dict(batch_size=8, seed=3, image_size=8, augment=("crop", "flip", "jitter"), normalize="dataset")
    it = D.make_iterator(src, **kw)
    for _ in range(9):  # crosses an epoch boundary
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(5)]
    restored = D.make_iterator(src, **kw)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_paired_iterator_state_and_independence():
    src, _ = _indexed_source(40)
    tgt = D.Source("other", "train", src.info, src._images, src.index, src.labels)
    make = lambda s, seed: D.make_iterator(s, batch_size=8, seed=seed, augment=(), normalize=None)  # noqa: E731
    pair = D.paired_iterator(make(src, 0), make(tgt, 1))
    first = next(pair)
    assert not np.array_equal(first["source"]["label"], first["target"]["label"])
    next(pair)
    state = json.loads(json.dumps(pair.get_state()))
    want = [next(pair) for _ in range(3)]
    again = D.paired_iterator(make(src, 0), make(tgt, 1))
    again.set_state(state)
    for w in want:
        g = next(again)
        for dom in ("source", "target"):
            np.testing.assert_array_equal(g[dom]["label"], w[dom]["label"])
    with pytest.raises(DataError):
        D.paired_iterator(make(src, 0), make(src, 0))


def test_channels_normalisation_and_device_preprocessing():
    src, images = _indexed_source(16)
    it = D.make_iterator(src, batch_size=16, seed=0, train=False, channels=3, normalize="imagenet")
    b = next(it)
    want = (np.repeat(images, 3, -1) / 255.0 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    np.testing.assert_allclose(b["image"], want, atol=1e-5)
    inception = next(D.make_iterator(src, batch_size=16, seed=0, train=False, channels=3, normalize="inception"))
    np.testing.assert_allclose(inception["image"], np.repeat(images, 3, -1) / 127.5 - 1.0, atol=1e-5)  # [-1, 1]
    raw = next(D.make_iterator(src, batch_size=16, seed=0, train=False, output="uint8"))
    assert raw["image"].dtype == np.uint8
    dev = D.preprocess_on_device(raw, it.mean, it.std, channels=3)
    np.testing.assert_allclose(np.asarray(dev["image"]), b["image"], atol=1e-5)
    stats = D.make_iterator(src, batch_size=4, seed=0, normalize="dataset")
    assert stats.mean[0] == pytest.approx(images.mean() / 255, rel=1e-6)
    assert stats.std[0] == pytest.approx(images.std() / 255, rel=1e-6)


def test_random_resized_crop_boxes():
    rng = np.random.default_rng(0)
    boxes = augment.crop_boxes(30, 40, 2000, rng, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 40 + 1e-9).all() and (boxes[:, 3] <= 30 + 1e-9).all()
    area = w * h / (30 * 40)
    assert area.min() >= 0.2 - 1e-9 and area.max() <= 0.6 + 1e-9
    assert (w / h).min() >= 0.5 - 1e-9 and (w / h).max() <= 2.0 + 1e-9


# ---------------------------------------------------------------- CLI


def _cli(*argv):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_cli_show_and_stats(fake, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert _cli("show", "fashion_mnist:invert", "fashion_mnist:mnistm", "--out", str(out), "--n", "5") == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert _cli("stats", "fashion_mnist", "digits:invert") == 0
    text = capsys.readouterr().out
    fashion, digits = text.split("\n\n")
    assert fashion.splitlines()[-1].split() == ["total", str(N_TRAIN), str(N_TEST)]
    assert "Sneaker" in fashion and digits.startswith("digits:invert")
    with pytest.raises(DataError):
        _cli("stats", "nope")


def test_unknown_option_is_a_data_error():
    with pytest.raises(DataError, match="unknown load option"):
        D.load("digits", "train", colour=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError):
            D.make_iterator(_indexed_source(4)[0], batch_size=8, seed=0)
