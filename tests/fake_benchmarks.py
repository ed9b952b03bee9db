"""Miniature copies of the benchmarks in their published layout and archive formats, and a
local HTTP server (127.0.0.1, with Range requests) to download them from.

Written from the publishers' descriptions of their files, not from jtl's readers:

- image-list datasets: ``<path> <label>`` lines with the published label numbers of the
  classes used here (Office-31 and DomainNet alphabetical, Office-Home TLlib's order, PACS
  1-based), tiny JPEG/PNG files in the published folders, packed as the publisher packs
  them (TLlib: ``image_list.zip`` + ``<domain>.tgz``; VisDA: ``<folder>.tar`` with its own
  ``image_list.txt``; DomainNet: ``<domain>.zip`` + ``<domain>_{train,test}.txt``);
- MNIST: gzip IDX files; USPS: bz2 LIBSVM lines; SVHN: MATLAB v5 ``X`` (32, 32, 3, N) and
  ``y`` with 10 for the digit 0; MNIST-M: ``mnist_m.tar.gz`` with PNGs and label lists;
  CIFAR-10: a tar.gz of pickled batches (R, G, B planes, row-major); STL-10: a tar.gz of
  uint8 binaries, each image's planes stored column-major, labels 1..10.

``make_layout(dataset, data_dir)`` writes the extracted layout under ``data_dir/<dataset>``;
``make_archives(dataset, mirror_dir)`` writes the published files under
``mirror_dir/<dataset>/`` (what ``$JTL_DATA_MIRROR`` points at); ``expected(dataset)``
gives per-domain class counts and split sizes; ``Server`` serves a directory.
"""

from __future__ import annotations

import bz2
import gzip
import http.server
import pickle
import shutil
import struct
import tarfile
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# dataset -> ({class used by the fake: its published label}, {domain name: folder})
LISTS = {
    "office31": ({"back_pack": 0, "bike": 1, "trash_can": 30}, {"A": "amazon", "D": "dslr", "W": "webcam"}),
    "office_home": ({"Drill": 0, "Exit_Sign": 1, "Marker": 64},
                    {"Ar": "Art", "Cl": "Clipart", "Pr": "Product", "Rw": "Real_World"}),
    "visda2017": ({"aeroplane": 0, "bicycle": 1, "truck": 11}, {"synthetic": "train", "real": "validation"}),
    "domainnet": ({"aircraft_carrier": 0, "airplane": 1, "zigzag": 344},
                  {d: d for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")}),
    "pacs": ({"dog": 1, "elephant": 2, "person": 7}, {d: d for d in ("art_painting", "cartoon", "photo", "sketch")}),
}
DIGITS = {"mnist": (10, 5), "usps": (10, 5), "svhn": (10, 5), "mnistm": (10, 5), "cifar10": (10, 5), "stl10": (10, 5)}
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def per_class(j: int) -> int:
    """Images of the j-th fake class in one domain (or split): 1, 2, 3, 1, ..."""
    return j % 3 + 1


def _image(path: Path, seed: int, size=(5, 6)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _lines(root: Path, rel_dir: str, dataset: str, prefix: str, n_of, ext: str, seed: int) -> list[str]:
    """Write images ``root/rel_dir/<class>/<seed>_<i>.ext``; list lines relative to ``root/prefix``."""
    classes, _ = LISTS[dataset]
    out = []
    for j, (name, label) in enumerate(classes.items()):
        for i in range(n_of(j)):
            rel = f"{rel_dir}/{name}/{seed}_{i:03d}.{ext}"
            _image(root / rel, seed * 1000 + j * 10 + i)
            out.append(f"{rel[len(prefix):]} {label}")
    return out


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _image_lists(dataset: str, root: Path) -> None:
    _, domains = LISTS[dataset]
    for k, folder in enumerate(domains.values()):
        if dataset == "office31":
            lines = _lines(root, f"{folder}/images", dataset, "", per_class, "jpg", k)
            _write(root / f"image_list/{folder}.txt", lines)
        elif dataset == "office_home":
            _write(root / f"image_list/{folder}.txt", _lines(root, folder, dataset, "", per_class, "jpg", k))
        elif dataset == "visda2017":
            ext = "png" if folder == "train" else "jpg"
            _write(root / f"{folder}/image_list.txt", _lines(root, folder, dataset, f"{folder}/", per_class, ext, k))
        elif dataset == "domainnet":
            _write(root / f"{folder}_train.txt", _lines(root, folder, dataset, "", per_class, "jpg", k))
            _write(root / f"{folder}_test.txt", _lines(root, folder, dataset, "", lambda j: 1, "jpg", 50 + k))
        else:  # pacs: all = train + val; val holds the first image of every class with two or more
            lines = _lines(root, folder, dataset, "", per_class, "jpg", k)
            val = [ln for ln in lines if ln.split()[0].endswith("_000.jpg")
                   and sum(x.split("/")[1] == ln.split("/")[1] for x in lines) > 1]
            _write(root / f"image_list/{folder}_all.txt", lines)
            _write(root / f"image_list/{folder}_val.txt", val)
            _write(root / f"image_list/{folder}_train.txt", [ln for ln in lines if ln not in val])


def digit_images(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The fake's images (N, H, W, C) uint8 and published labels (0-based) of a split."""
    shape = {"mnist": (28, 28, 1), "usps": (16, 16, 1), "svhn": (32, 32, 3), "mnistm": (28, 28, 3),
             "cifar10": (32, 32, 3), "stl10": (96, 96, 3)}[dataset]
    n = DIGITS[dataset][0 if split == "train" else 1] * 2
    rng = np.random.default_rng([len(dataset), n])
    if dataset == "usps":  # LIBSVM values in {-1, -.5, 0, .5, 1}
        images = rng.choice(np.array([0, 63, 127, 191, 255], np.uint8), (n, *shape))
    else:
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return images, np.arange(n) % 10


def _arrays(dataset: str, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    train, test = digit_images(dataset, "train"), digit_images(dataset, "test")
    if dataset == "mnist":
        for prefix, (x, y) in (("train", train), ("t10k", test)):
            with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
                f.write(struct.pack(">iiii", 2051, len(x), 28, 28) + x[..., 0].tobytes())
            with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
                f.write(struct.pack(">ii", 2049, len(y)) + y.astype(np.uint8).tobytes())
    elif dataset == "usps":
        values = {0: "-1", 63: "-0.5", 127: "0", 191: "0.5", 255: "1"}
        for name, (x, y) in (("usps.bz2", train), ("usps.t.bz2", test)):
            rows = [f"{label + 1} " + " ".join(f"{i + 1}:{values[int(v)]}" for i, v in enumerate(img.reshape(-1)))
                    for img, label in zip(x, y)]
            with bz2.open(root / name, "wt") as f:
                f.write("\n".join(rows) + "\n")
    elif dataset == "svhn":
        from scipy.io import savemat

        for name, (x, y) in (("train_32x32.mat", train), ("test_32x32.mat", test)):
            savemat(root / name, {"X": np.transpose(x, (1, 2, 3, 0)), "y": np.where(y == 0, 10, y).reshape(-1, 1)})
    elif dataset == "mnistm":
        for split, (x, y) in (("train", train), ("test", test)):
            lines = []
            for i, (img, label) in enumerate(zip(x, y)):
                (root / "mnist_m" / f"mnist_m_{split}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / "mnist_m" / f"mnist_m_{split}" / f"{i:08d}.png")
                lines.append(f"{i:08d}.png {label}")
            _write(root / "mnist_m" / f"mnist_m_{split}_labels.txt", lines)
    elif dataset == "cifar10":
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        batches = {f"data_batch_{i + 1}": (train[0][i::5], train[1][i::5]) for i in range(5)}
        for name, (x, y) in {**batches, "test_batch": test}.items():
            planes = np.stack([np.concatenate([img[:, :, c].reshape(-1) for c in range(3)]) for img in x])
            (base / name).write_bytes(pickle.dumps({"data": planes, "labels": [int(v) for v in y]}, protocol=2))
        (base / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_NAMES}, protocol=2))
    else:  # stl10
        base = root / "stl10_binary"
        base.mkdir(parents=True, exist_ok=True)
        for split, (x, y) in (("train", train), ("test", test)):
            columns = [img[:, :, c].flatten(order="F") for img in x for c in range(3)]
            (base / f"{split}_X.bin").write_bytes(np.concatenate(columns).tobytes())
            (base / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        (base / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")


def batch_order(dataset: str, split: str) -> np.ndarray:
    """Positions of the fake's images in the published file order (CIFAR's five batches)."""
    n = len(digit_images(dataset, split)[1])
    if dataset == "cifar10" and split == "train":
        return np.concatenate([np.arange(i, n, 5) for i in range(5)])
    return np.arange(n)


def make_layout(dataset: str, data_dir: str | Path) -> Path:
    """The extracted standard layout of ``dataset`` under ``data_dir/<dataset>``."""
    root = Path(data_dir) / dataset
    (_image_lists if dataset in LISTS else _arrays)(dataset, root)
    return root


def _archive(kind: str, out: Path, root: Path, members: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as z:
            for m in members:
                for f in sorted([root / m] if (root / m).is_file() else (root / m).rglob("*")):
                    z.write(f, f.relative_to(root))
    else:
        with tarfile.open(out, {"tar": "w", "tgz": "w:gz"}[kind]) as t:
            for m in members:
                t.add(root / m, m)


def published_files(dataset: str) -> dict[str, tuple[str, list[str]]]:
    """filename -> (archive kind or "file", paths of the layout it holds)."""
    if dataset in ("office31", "office_home", "pacs"):
        _, domains = LISTS[dataset]
        return {"image_list.zip": ("zip", ["image_list"]),
                **{f"{f}.tgz": ("tgz", [f]) for f in domains.values()}}
    if dataset == "visda2017":
        return {"train.tar": ("tar", ["train"]), "validation.tar": ("tar", ["validation"])}
    if dataset == "domainnet":
        out = {}
        for d in LISTS[dataset][1]:
            out |= {f"{d}.zip": ("zip", [d]), f"{d}_train.txt": ("file", []), f"{d}_test.txt": ("file", [])}
        return out
    return {
        "mnist": {f: ("file", []) for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")},
        "usps": {"usps.bz2": ("file", []), "usps.t.bz2": ("file", [])},
        "svhn": {"train_32x32.mat": ("file", []), "test_32x32.mat": ("file", [])},
        "mnistm": {"mnist_m.tar.gz": ("tgz", ["mnist_m"])},
        "cifar10": {"cifar-10-python.tar.gz": ("tgz", ["cifar-10-batches-py"])},
        "stl10": {"stl10_binary.tar.gz": ("tgz", ["stl10_binary"])},
    }[dataset]


def make_archives(dataset: str, mirror_dir: str | Path) -> dict[str, Path]:
    """The published files of ``dataset`` under ``mirror_dir/<dataset>/``: {filename: path}."""
    out_dir = Path(mirror_dir) / dataset
    with tempfile.TemporaryDirectory() as tmp:
        root = make_layout(dataset, tmp)
        out = {}
        for name, (kind, members) in published_files(dataset).items():
            out[name] = out_dir / name
            if kind == "file":
                out_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(root / name, out[name])
            else:
                _archive(kind, out[name], root, members)
    return out


def expected(dataset: str) -> dict:
    """{domain: {"counts": {class: n}, "splits": {split: n}}} of the fake (domain "" if none)."""
    if dataset not in LISTS:
        n_train, n_test = (len(digit_images(dataset, s)[1]) for s in ("train", "test"))
        names = {"cifar10": CIFAR10_NAMES, "stl10": STL10_NAMES}.get(dataset, [str(c) for c in range(10)])
        counts = {c: (n_train + n_test) // 10 for c in names}
        return {"": {"counts": counts, "splits": {"train": n_train, "test": n_test, "all": n_train + n_test}}}
    classes, domains = LISTS[dataset]
    out = {}
    for d in domains:
        train = {c: per_class(j) for j, c in enumerate(classes)}
        if dataset == "domainnet":
            counts = {c: n + 1 for c, n in train.items()}
            splits = {"train": sum(train.values()), "test": len(classes), "all": sum(counts.values())}
        elif dataset == "pacs":
            val = sum(1 for n in train.values() if n > 1)
            total = sum(train.values())
            counts, splits = train, {"train": total - val, "val": val, "test": total, "all": total}
        else:
            counts, splits = train, {s: sum(train.values()) for s in ("train", "test", "all")}
        out[d] = {"counts": counts, "splits": splits}
    return out


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of ``server.root`` with ``Range: bytes=N-``; drops a connection where told to."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = Path(srv.root) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(data) and start:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", srv.content_type.get(self.path, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = srv.drop_after.pop(self.path, None)
        self.wfile.write(data[start:] if cut is None else data[start : start + cut])
        if cut is not None:
            self.close_connection = True


class Server:
    """``with Server(root) as s:`` serves ``root`` on ``s.url`` (127.0.0.1, a free port).

    ``s.drop_after[path] = n`` sends only n bytes of the next GET of ``path`` and closes the
    connection; ``s.requests`` records (path, Range header) of every GET; ``s.content_type``
    overrides a path's Content-Type.
    """

    def __init__(self, root: str | Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.root, self.httpd.requests, self.httpd.drop_after, self.httpd.content_type = str(root), [], {}, {}
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self):
        return self.httpd.requests

    @property
    def drop_after(self):
        return self.httpd.drop_after

    @property
    def content_type(self):
        return self.httpd.content_type

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
