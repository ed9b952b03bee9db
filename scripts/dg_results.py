"""Domain generalization on Rotated Fashion-MNIST: every DG algorithm next to ERM, every held-out angle.

Runs ``configs/dg_rotated_fmnist.py``'s sweep (DomainBed's default hyperparameters, ``n_hparams=1``;
trial seeds vectorized into one program per algorithm and held-out angle) through ``jtl sweep``'s
runner, one held-out angle after another in ``--tests`` order (a rerun skips finished runs), then
prints DomainBed's tables (``jtl collect --domainbed``) and, with ``--out``, writes them into a
markdown file between two marker lines (replacing an earlier version there)::

    python scripts/dg_results.py --workdir runs/dg --out docs/domain-generalization.md

``--budget-min`` stops starting new held-out angles after that many minutes (the table then says
which cells are missing: ``X``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

BEGIN, END = "<!-- dg_results: begin -->", "<!-- dg_results: end -->"


def sweep_arg(a, tests: str) -> str:
    return (f"sweep,algorithms={a.algorithms},n_hparams=1,seeds={a.seeds},tests={tests},steps={a.steps},"
            f"per_domain={a.per_domain},size={a.size},eval_every={a.eval_every},test_limit={a.test_limit}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/dg")
    p.add_argument("--algorithms", default="erm+irm+vrex+groupdro+coral+mmd+mixstyle+swad")
    p.add_argument("--tests", default="5,0,1,2,3,4", help="held-out angle indices, in the order to run them")
    p.add_argument("--seeds", default="0+1+2")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--per-domain", type=int, default=8)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--budget-min", type=float, default=0.0, help="start no new held-out angle after this (0: none)")
    p.add_argument("--out", help="markdown file to write the tables into (between the marker lines)")
    a = p.parse_args(argv)

    from jtl.dg.selection import report  # noqa: PLC0415
    from jtl.sweep.runner import run_sweep  # noqa: PLC0415

    config = str(Path(__file__).parents[1] / "configs" / "dg_rotated_fmnist.py")
    t0 = time.perf_counter()
    extra = [f"data.val_fraction={a.val_fraction}", "progress=False"]
    for tests in a.tests.split(","):
        if a.budget_min and time.perf_counter() - t0 > 60 * a.budget_min:
            print(f"budget of {a.budget_min} min spent: held-out angles from index {tests} on are not run")
            break
        run_sweep(f"{config}:{sweep_arg(a, tests)}", a.workdir, extra)
        print(f"held-out index {tests} done at {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    text = report([a.workdir])
    print(text)
    if a.out:
        settings = (f"Settings: `{sweep_arg(a, a.tests.replace(',', '+'))}`, `{' '.join(extra[:1])}`; "
                    f"{(time.perf_counter() - t0) / 60:.0f} min wall.\n\n")
        block = f"{BEGIN}\n{settings}{text}{END}"
        path = Path(a.out)
        old = path.read_text() if path.exists() else ""
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        path.write_text(pattern.sub(lambda _: block, old) if pattern.search(old) else old + "\n" + block + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
