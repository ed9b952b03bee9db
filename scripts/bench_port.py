"""Time porting a ResNet checkpoint and report peak memory.

Makes a torchvision resnet50 with random weights (real torchvision, system
Python), then in fresh processes: (a) torch.load of the .pth (the reference,
torchvision's own loader), (b) jtl's torch-free ``port_torchvision`` to
{"params", "batch_stats"}, (c) the same plus ``jtl port``'s orbax write.
Prints one JSON line per case; peak memory is the growth of the process's
maximum resident set over the interpreter with its libraries imported.

    .venv/bin/python scripts/bench_port.py [--arch resnet50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"

CHILD = r"""
import json, resource, sys, time
arch, pth, case, out = sys.argv[1:5]
if case == "torch.load":
    import torch
    load = lambda: torch.load(pth, map_location="cpu")
else:
    import jax, numpy as np
    from jtl.weights import port_torchvision, save_ported
    if case == "jtl port_torchvision":
        load = lambda: port_torchvision(pth, arch)
    else:
        import shutil
        def load():
            v = port_torchvision(pth, arch)
            save_ported(out, v, {"arch": arch}, overwrite=True)
            return v
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); obj = load(); dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"seconds": dt, "peak_mib": peak / 1024}))
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pth, npz = Path(tmp) / "w.pth", Path(tmp) / "ref.npz"
        subprocess.run([SYSTEM_PYTHON, str(ROOT / "tests/torch_reference.py"), "--arch", a.arch, "--sizes", "32",
                        "--pth", str(pth), "--out", str(npz)], check=True)
        size_mib = pth.stat().st_size / 2**20
        results = {}
        for case in ("torch.load", "jtl port_torchvision", "jtl port (+orbax write)"):
            python = SYSTEM_PYTHON if case == "torch.load" else sys.executable
            runs = []
            for _ in range(a.repeat):
                r = subprocess.run([python, "-c", CHILD, a.arch, str(pth), case, str(Path(tmp) / "out")],
                                   capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["seconds"])
            results[case] = best
        ref = results["torch.load"]["seconds"]
        for case, r in results.items():
            print(json.dumps({"case": case, "arch": a.arch, "file_mib": round(size_mib, 1),
                              "seconds": round(r["seconds"], 3), "vs_torch_load": round(r["seconds"] / ref, 2),
                              "peak_mib": round(r["peak_mib"], 1), "peak_over_file": round(r["peak_mib"] / size_mib, 2)}))


if __name__ == "__main__":
    main()
