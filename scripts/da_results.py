"""Domain-adaptation results of the built-in shifts (docs/results.md): ``jtl da-results`` on
``configs/da_<shift>.py`` for each ``--shifts`` name; every other option is ``jtl da-results``'
(the library's :mod:`jtl.results.da_report`, which takes any config file)::

    .venv/bin/python scripts/da_results.py --shifts fmnist_mnistm,fmnist_invert \\
        --methods source_only,dann,cdan,mcc --seeds 0,1,2 --workdir runs/da --out docs/results.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSED_ON = ("--methods", "--controls", "--seeds", "--override", "--figures")  # jtl da-results' options


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--shifts", default="fmnist_mnistm,fmnist_invert")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--workdir", default="runs/da")
    p.add_argument("-h", "--help", action="store_true")
    a, rest = p.parse_known_args(argv)
    from jtl.cli import main as jtl_main  # noqa: PLC0415

    if a.help:  # this script's own option, then jtl da-results'
        print("--shifts SHIFT,...: configs/da_<SHIFT>.py to run (default: fmnist_mnistm,fmnist_invert); "
              f"passed on: {', '.join(PASSED_ON)}, ...\n")
        return jtl_main(["da-results", "--help"])
    configs = [w for s in a.shifts.split(",") if s
               for w in ("--config", os.path.relpath(ROOT / "configs" / f"da_{s}.py"))]
    return jtl_main(["da-results", *configs, "--workdir", a.workdir, "--out", a.out, *rest])


if __name__ == "__main__":
    sys.exit(main())
