"""Benchmark builders against miniature fakes in the published layouts and archive formats,
downloaded from a local HTTP server (tests/fake_benchmarks.py): download, checksums, resume,
extraction, class names and counts, splits, offline and damaged-file errors, the CIFAR-10 <->
STL-10 9-class protocol."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fake_benchmarks as fake
import jtl.data as D
from jtl.data.benchmarks import download, registry
from jtl.errors import DataError
from train_helpers import one_line_error, run_jtl

# One domain per benchmark in the default suite; every domain in test-slow.
FIRST = {"office31": "A", "office_home": "Cl", "visda2017": "real", "domainnet": "clipart", "pacs": "photo"}
ALL_DATASETS = list(fake.LISTS) + list(fake.DIGITS)

# The publishers' class lists (https://www.cs.toronto.edu/~kriz/cifar.html, batches.meta;
# https://cs.stanford.edu/~acoates/stl10/, class_names.txt).
CIFAR10_PUBLISHED = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_PUBLISHED = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mirror = tmp_path_factory.mktemp("mirror")
    for dataset in ALL_DATASETS:
        fake.make_archives(dataset, mirror)
    with fake.Server(mirror) as s:
        s.root = mirror
        yield s


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """A fresh $JTL_DATA_DIR, the fake server as $JTL_DATA_MIRROR, and the publishers' md5s
    replaced by the fakes' (each file keeps the kind of checksum it has, or none)."""
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JTL_DATA_MIRROR", server.url)
    for name, bench in list(registry.BENCHMARKS.items()):
        faked = dataclasses.replace(bench, remotes=_fake_sums(bench, server.root))
        monkeypatch.setitem(registry.BENCHMARKS, name, faked)
    server.requests.clear()
    return tmp_path / "data"


def _fake_sums(bench, mirror: Path):
    def remotes(domain):
        out = []
        for r in bench.remotes(domain):
            if r.checksum:
                algorithm = r.checksum.split(":")[0]
                data = (mirror / bench.name / r.filename).read_bytes()
                r = dataclasses.replace(r, checksum=f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")
            out.append(r)
        return tuple(out)

    return remotes


def _name(dataset: str) -> str:
    return f"{dataset}:{FIRST[dataset]}" if dataset in FIRST else dataset


def _check_domain(dataset: str, domain: str, data_dir: Path) -> None:
    """Class names, counts, splits and pixels of a loaded domain against the fake's."""
    name = f"{dataset}:{domain}" if domain else dataset
    want = fake.expected(dataset)[domain]
    src = D.load(name, "all")
    names = src.info.class_names
    assert len(names) == len(registry.class_names(dataset))
    counts = Counter(names[y] for y in src.labels)
    assert counts == Counter(want["counts"])
    for split, n in want["splits"].items():
        assert len(D.load(name, split)) == n, split
    if dataset in fake.LISTS:  # the published label numbers name the same classes here
        published, folders = fake.LISTS[dataset]
        offset = 1 if dataset == "pacs" else 0
        for cls, label in published.items():
            assert names[label - offset] == cls
        root = data_dir / dataset  # pixels and class of every image equal the fake's file's
        files = [f for f in sorted(root.rglob("*.*")) if f.suffix in (".jpg", ".png")
                 and f.relative_to(root).parts[0] == folders[domain]]
        wanted = {np.asarray(Image.open(f).convert("RGB")).tobytes(): f.parent.name for f in files}
        got = {src[i]["image"].tobytes(): names[src.labels[i]] for i in range(len(src))}
        assert got == wanted and len(wanted) == len(src)
    else:
        for split in ("train", "test"):
            images, labels = fake.digit_images(dataset, split)
            order = fake.batch_order(dataset, split)
            s = D.load(name, split)
            assert np.array_equal(s.getitems(np.arange(len(s)))["image"], images[order])
            expect = [fake.CIFAR10_NAMES[y] if dataset == "cifar10" else fake.STL10_NAMES[y] if dataset == "stl10"
                      else str(y) for y in labels[order]]
            assert [names[y] for y in s.labels] == expect


@pytest.mark.parametrize("dataset", ALL_DATASETS)
def test_download_resume_extract_and_splits(env, server, dataset):
    """Every file the domain needs is downloaded, its connection dropped half-way and the
    rest fetched with a Range request; archives unpacked; then names, counts, splits, pixels."""
    needed = {r.filename for r in registry.BENCHMARKS[dataset].remotes(FIRST.get(dataset, ""))}
    half = {f: (server.root / dataset / f).stat().st_size // 2 for f in needed}
    for f, n in half.items():
        server.drop_after[f"/{dataset}/{f}"] = n
    D.load(_name(dataset), "train")
    assert Counter(server.requests) == Counter([(f"/{dataset}/{f}", None) for f in needed]
                                               + [(f"/{dataset}/{f}", f"bytes={n}-") for f, n in half.items()])
    assert not list((env / "downloads").rglob("*.*"))  # archives removed once extracted, no .part left
    _check_domain(dataset, FIRST.get(dataset, ""), env)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(fake.LISTS))
def test_every_domain(env, dataset):
    for domain in fake.LISTS[dataset][1]:
        _check_domain(dataset, domain, env)


def test_local_layout_is_used_without_download(tmp_path, monkeypatch, server):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JTL_DATA_MIRROR", server.url)
    server.requests.clear()
    for dataset in ("office31", "pacs", "mnist", "stl10"):
        fake.make_layout(dataset, tmp_path)
        assert len(D.load(_name(dataset), "all", download=False)) == fake.expected(dataset)[FIRST.get(dataset, "")][
            "splits"]["all"]
    assert server.requests == []


def test_checksum_mismatch_removes_the_file(tmp_path, monkeypatch, server):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JTL_DATA_MIRROR", server.url)  # the fakes' md5s differ from the publisher's
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz has md5 [0-9a-f]{32}, the publisher's is "
                                        r"f68b3c2dcbeaaa9fbdd348bbdeb94873") as e:
        D.load("mnist", "train")
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "mnist").glob("train-images*"))  # neither the file nor its .part


@pytest.mark.parametrize("dataset", ["mnist", "usps", "svhn", "cifar10", "stl10"])
def test_wrong_checksum_of_each_builder(env, monkeypatch, dataset):
    bench = registry.BENCHMARKS[dataset]
    first = bench.remotes("")[0]
    wrong = dataclasses.replace(first, checksum=first.checksum.split(":")[0] + ":" + "0" * 32)
    monkeypatch.setitem(registry.BENCHMARKS, dataset, dataclasses.replace(
        bench, remotes=lambda d: (wrong, *bench.remotes(d)[1:])))
    said = f"{dataset}: {first.filename} has md5 [0-9a-f]{{32}}, the publisher's is 0{{32}}; the file was removed"
    with pytest.raises(DataError, match=said) as e:
        D.load(dataset, "train")
    assert "\n" not in str(e.value)
    assert not [f for f in env.rglob(first.filename + "*")]  # neither the file nor its .part


def test_resume_in_a_later_run(tmp_path, monkeypatch, server):
    monkeypatch.setenv("JTL_DATA_MIRROR", server.url)
    remote = registry.BENCHMARKS["mnist"].remotes("")[0]
    served = (server.root / "mnist" / remote.filename).read_bytes()
    remote = dataclasses.replace(remote, checksum="sha256:" + hashlib.sha256(served).hexdigest())
    dest = tmp_path / remote.filename
    server.drop_after[f"/mnist/{remote.filename}"] = 300
    with pytest.raises(DataError, match="broke off at 300 bytes.*run again to resume") as e:
        download.fetch(remote, "mnist", dest, attempts=1)
    assert "\n" not in str(e.value) and dest.with_name(dest.name + ".part").stat().st_size == 300
    server.requests.clear()
    assert download.fetch(remote, "mnist", dest).read_bytes() == served
    assert server.requests == [(f"/mnist/{remote.filename}", "bytes=300-")]


def test_damaged_archive_is_one_line_and_leaves_nothing(env, server, tmp_path):
    good = (server.root / "office31" / "dslr.tgz").read_bytes()
    broken = tmp_path / "broken"
    (broken / "office31").mkdir(parents=True)
    (broken / "office31" / "dslr.tgz").write_bytes(good[: len(good) // 2])
    (broken / "office31" / "image_list.zip").write_bytes((server.root / "office31" / "image_list.zip").read_bytes())
    with fake.Server(broken) as s, pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTL_DATA_MIRROR", s.url)
        with pytest.raises(DataError, match=r"dslr.tgz is not a readable archive .*delete it and run again") as e:
            D.load("office31:D", "all")
    assert "\n" not in str(e.value)
    root = env / "office31"
    assert not (root / "dslr").exists() and not list(root.glob(".extracting*"))


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JTL_DATA_MIRROR", _closed_port())
    dest = tmp_path / "downloads" / "office31" / "image_list.zip"
    with pytest.raises(DataError, match="cannot reach") as e:
        D.load("office31:W", "train")
    assert f"put it at {dest}" in str(e.value) and "\n" not in str(e.value)
    missing = f"usps.bz2 is missing and download=False; .* put it at {tmp_path}/usps/usps.bz2"
    with pytest.raises(DataError, match=missing):
        D.load("usps", "train", download=False)
    line = one_line_error(run_jtl("data", "show", "pacs:sketch", "--out", tmp_path / "grid.png"), "cannot reach",
                          "image_list.zip")
    assert str(tmp_path / "downloads" / "pacs") in line


def test_files_put_where_the_offline_line_says_are_used(tmp_path, monkeypatch, server):
    """Offline, each error names one file and a path; putting the published file there is enough."""
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    placed = []
    for _ in range(4):
        try:
            src = D.load("office31:W", "all", download=False)
            break
        except DataError as e:
            target = Path(str(e).rsplit("put it at ", 1)[1])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((server.root / "office31" / target.name).read_bytes())
            placed.append(target.relative_to(tmp_path).as_posix())
    assert placed == ["downloads/office31/image_list.zip", "downloads/office31/webcam.tgz"]
    assert len(src) == fake.expected("office31")["W"]["splits"]["all"]


def test_web_page_instead_of_archive_is_refused(env, server):
    server.content_type["/mnistm/mnist_m.tar.gz"] = "text/html; charset=utf-8"
    try:
        with pytest.raises(DataError, match="a web page instead of the file") as e:
            D.load("mnistm", "train")
        assert "put it at" in str(e.value) and "\n" not in str(e.value)
    finally:
        server.content_type.clear()


def test_cifar_stl_nine_class_protocol(tmp_path, monkeypatch):
    """Both directions: the same nine names in the same order, frog and monkey dropped,
    STL's car matched to CIFAR's automobile; class lists as the publishers give them."""
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    fake.make_layout("cifar10", tmp_path)
    fake.make_layout("stl10", tmp_path)
    assert D.info("cifar10").class_names == tuple(CIFAR10_PUBLISHED)
    assert D.info("stl10").class_names == tuple(STL10_PUBLISHED)
    cifar9, stl9 = D.load("cifar9", "train", download=False), D.load("stl9", "test", download=False)
    assert cifar9.info.class_names == stl9.info.class_names == D.info("cifar9").class_names
    shared = sorted(set(CIFAR10_PUBLISHED) & {"automobile" if n == "car" else n for n in STL10_PUBLISHED})
    assert sorted(cifar9.info.class_names) == shared and len(shared) == 9
    for view, dataset, split, published, rename in ((cifar9, "cifar10", "train", CIFAR10_PUBLISHED, {}),
                                                    (stl9, "stl10", "test", STL10_PUBLISHED, {"car": "automobile"})):
        images, labels = fake.digit_images(dataset, split)
        order = fake.batch_order(dataset, split)
        names = [rename.get(published[y], published[y]) for y in labels[order]]
        keep = [i for i, n in enumerate(names) if n in shared]
        assert [view.info.class_names[y] for y in view.labels] == [names[i] for i in keep]
        assert np.array_equal(view.getitems(np.arange(len(view)))["image"], images[order][keep])


def test_test_and_val_fractions(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    fake.make_layout("office31", tmp_path)
    fake.make_layout("domainnet", tmp_path)
    train = D.load("office31:A", "train", test_fraction=0.5, download=False)
    test = D.load("office31:A", "test", test_fraction=0.5, download=False)
    assert not set(train.index) & set(test.index) and len(train) + len(test) == 6
    val = D.load("domainnet:clipart", "val", val_fraction=0.5, download=False)
    rest = D.load("domainnet:clipart", "train", val_fraction=0.5, download=False)
    assert not set(val.index) & set(rest.index) and len(val) + len(rest) == 6
    with pytest.raises(DataError, match="published test split"):
        D.load("domainnet:clipart", "train", test_fraction=0.2, download=False)


@pytest.mark.parametrize("name, spec", [
    ("office31:A", ("office31", "A")), ("office_home:Ar", ("office_home", "Ar")),
    ("visda2017:train", ("visda2017", "synthetic")), ("visda2017:validation", ("visda2017", "real")),
    ("domainnet:quickdraw", ("domainnet", "quickdraw")), ("pacs:P", ("pacs", "photo")),
    ("mnist", ("mnist", "")), ("usps", ("usps", "")), ("svhn", ("svhn", "")), ("mnistm", ("mnistm", "")),
    ("cifar10", ("cifar10", "")), ("stl10", ("stl10", "")), ("cifar9", ("cifar9", "")),
])
def test_names(name, spec):
    sp = D.parse_name(name)
    assert (sp.kind, sp.base, sp.domain) == ("benchmark", *spec)
    assert D.parse_name(str(sp)) == sp


@pytest.mark.parametrize("name, match", [
    ("office31:X", "unknown office31 domain 'X'; use one of office31:A, office31:D, office31:W"),
    ("mnist:rotate@30", "mnist has no domains"),
    ("office31", "unknown office31 domain ''"),
])
def test_bad_names_are_one_line(name, match):
    with pytest.raises(DataError, match=match) as e:
        D.parse_name(name)
    assert "\n" not in str(e.value)


def test_mirror_and_extract_are_all_or_nothing(tmp_path):
    """A zip with a damaged member is refused whole: nothing of it lands in the target."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("image_list/a.txt", "x" * 100)
        z.writestr("image_list/b.txt", "y" * 100)
    data = bytearray(buf.getvalue())
    data[data.index(b"y" * 100) + 10] ^= 0xFF  # flip a byte of b.txt: its CRC no longer matches
    archive = tmp_path / "image_list.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="not a readable archive"):
        download.extract(archive, tmp_path / "root", "office31")
    assert list((tmp_path / "root").iterdir()) == []


@pytest.mark.parametrize("line, match", [
    ("amazon/images/sofa/x.jpg 3", "is not '<class folder>/<image> <label>' with a published class"),
    ("amazon/images/bike/0_000.jpg 0", "label 0 is 'bike' here but 'back_pack' before"),
])
def test_a_list_that_is_not_the_published_one_is_refused(tmp_path, monkeypatch, line, match):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    root = fake.make_layout("office31", tmp_path)
    listing = root / "image_list" / "amazon.txt"
    listing.write_text(listing.read_text() + line + "\n")
    with pytest.raises(DataError, match=match) as e:
        D.load("office31:A", "train", download=False)
    assert str(listing) in str(e.value) and "\n" not in str(e.value)
    assert not [f for f in (tmp_path / "jtl_benchmark").rglob("*") if f.is_file()]  # nothing half-prepared


def test_info_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    meta = D.info("domainnet:sketch", val_fraction=0.1)
    assert (meta.num_classes, meta.image_shape, meta.splits) == (345, (None, None, 3), ("train", "test", "all", "val"))
    assert meta.class_names[0] == "aircraft_carrier" and meta.class_names[-1] == "zigzag"
    assert D.info("pacs:S").splits == ("train", "val", "test", "all") and D.num_classes("svhn") == 10
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="set JTL_DATA_DIR instead of passing data_dir"):
        D.load("mnist", "train", data_dir=str(tmp_path))
