"""Memory and time of a large benchmark domain: prepare it once, then read batches.

Writes a DomainNet-style layout of N copies of one 64x64 JPEG (``real/<class>/<i>.jpg`` and
``real_{train,test}.txt``) under WORKDIR, then in fresh processes: (1) prepares and loads
``domainnet:real`` (array_record, encoded images), (2) loads the prepared domain and reads
20 batches of 64 at 64 px. Prints wall time and peak resident memory of each, and of a
process that only imports ``jtl.data``::

    python scripts/bench_benchmark_store.py --images 20000 --workdir /tmp/bench_store
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

STEP = r"""
import resource, sys, time
import jtl.data as D
t = time.time()
if sys.argv[1] != "import":
    src = D.load("domainnet:real", "train", download=False)
    if sys.argv[1] == "read":
        it = D.make_iterator(src, batch_size=64, seed=0, image_size=64)
        for _ in range(20):
            next(it)
print(f"{time.time() - t:.1f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
"""


def write_layout(root: Path, n: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    classes = {"aircraft_carrier": 0, "airplane": 1, "zigzag": 344}
    lines = {"train": [], "test": []}
    for i in range(n):
        name = list(classes)[i % 3]
        folder = root / "real" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(buf.getvalue())
        lines["train" if i % 4 else "test"].append(f"real/{name}/{i}.jpg {classes[name]}")
    for split, rows in lines.items():
        (root / f"real_{split}.txt").write_text("\n".join(rows) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--workdir", default="/tmp/bench_store")
    args = p.parse_args()
    data = Path(args.workdir) / f"n{args.images}"
    if not (data / "domainnet" / "real_train.txt").exists():
        write_layout(data / "domainnet", args.images)
    env = {**os.environ, "JTL_DATA_DIR": str(data)}
    for step in ("import", "prepare", "read"):
        out = subprocess.run([sys.executable, "-c", STEP, step], env=env, capture_output=True, text=True, check=True)
        print(f"{args.images} images, {step}: {out.stdout.strip()}")
    stored = sum(f.stat().st_size for f in (data / "jtl_benchmark").rglob("*.array_record*"))
    print(f"array_record: {stored / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
