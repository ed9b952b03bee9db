"""jtl.data on the real Fashion-MNIST (Debian package dataset-fashion-mnist)."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

import jtl.data as D

RAW = Path("/usr/share/datasets/fashion-mnist")


def _raw(name, offset):
    with gzip.open(RAW / name) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    if not (RAW / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (make setup as root)")
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("JTL_FASHION_MNIST_DIR", raising=False)
        mp.setenv("JTL_DATA_DIR", str(tmp_path_factory.mktemp("jtl_data")))
        yield {
            "train": (_raw("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), _raw("train-labels-idx1-ubyte.gz", 8)),
            "test": (_raw("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), _raw("t10k-labels-idx1-ubyte.gz", 8)),
        }


def test_counts_shapes_labels(raw):
    for split, n in (("train", 60000), ("test", 10000)):
        src = D.load("fashion_mnist", split)
        images, labels = raw[split]
        assert len(src) == n == len(labels)
        np.testing.assert_array_equal(src.labels, labels)
        assert np.bincount(src.labels).tolist() == [n // 10] * 10
        for i in (0, 12345 % n, n - 1):
            ex = src[i]
            assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
            np.testing.assert_array_equal(ex["image"][..., 0], images[i])
    source_task = D.load("fashion_mnist", "train", classes=(0, 1, 2, 3, 4))
    target_task = D.load("fashion_mnist", "train", classes=(5, 6, 7, 8, 9), limit=100)
    assert len(source_task) == 30000 and np.bincount(target_task.labels).tolist() == [20] * 5
    np.testing.assert_array_equal(raw["train"][1][target_task.index], target_task.labels + 5)


def test_shifted_targets_never_come_from_source_train(raw):
    train = {x.tobytes() for x in raw["train"][0]}
    test = {x.tobytes() for x in raw["test"][0]}
    for split in ("train", "test"):
        src = D.load("fashion_mnist:invert", split)
        assert len(src) == 5000
        pre = {x.tobytes() for x in 255 - src.getitems(np.arange(len(src)))["image"][..., 0]}
        assert len(pre) == 5000 and pre <= test and not pre & train
