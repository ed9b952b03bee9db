"""How far a family's losses move under roundoff-sized changes, beside a vectorized sweep's gap.

    .venv/bin/python scripts/roundoff_sensitivity.py --arch densenet121 --optim sgd [--steps 3]

Three runs of the same tiny config (tests/train_helpers.tiny_config: digits, ``--size`` px, batch
16, seed 1): (a) alone; (b) alone with every initial parameter scaled by ``1 + eps u``,
u ~ N(0, 1), eps = ``--eps`` (1e-7: float32 roundoff); (c) as member 1 of a 2-member vectorized
sweep (seeds 0, 1). Prints each step's relative loss change of (b) and (c) against (a). A
sweep gap below (b)'s is within what roundoff alone does to that family; tests/
test_family_recipes.py's ROUNDOFF_GROWTH bounds come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def losses(workdir: Path):
    import numpy as np

    rows = (json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines())
    return np.array([r["train/loss"] for r in rows if "train/loss" in r])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="densenet121")
    p.add_argument("--module", default=None, help="module registering the family (default: jtl.models.<family>)")
    p.add_argument("--optim", default="sgd", choices=("sgd", "adamw"))
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--eps", type=float, default=1e-7)
    a = p.parse_args(argv)
    os.environ.setdefault("JTL_DATA_DIR", str(Path(tempfile.gettempdir()) / "jtl_roundoff_data"))
    import importlib

    import jax
    import numpy as np

    from jtl.models import family_of
    from jtl.train.loop import Trainer
    from jtl.train.vector import VectorTrainer
    from train_helpers import tiny_config

    importlib.import_module(a.module or f"jtl.models.{a.arch.rstrip('0123456789_')}")
    family_of(a.arch)  # a clear error for an unknown architecture

    def cfg(seed):
        return tiny_config(**{"model.name": a.arch, "data.image_size": a.size, "data.channels": 3, "batch_size": 16,
                              "total_steps": a.steps, "optim.name": a.optim,
                              "optim.lr": 1e-3 if a.optim == "adamw" else 0.01, "optim.weight_decay": 0.01,
                              "seed": seed})

    d = Path(tempfile.mkdtemp(prefix="roundoff_"))
    Trainer(cfg(1), d / "alone").run()
    t = Trainer(cfg(1), d / "perturbed")
    leaves, tree = jax.tree.flatten(t.task.state.params)
    keys = jax.random.split(jax.random.key(123), len(leaves))
    leaves = [x * (1 + a.eps * jax.random.normal(k, x.shape, x.dtype)) for x, k in zip(leaves, keys)]
    t.task.state = t.task.state.replace(params=jax.tree.unflatten(tree, leaves))
    t.run()
    VectorTrainer([cfg(0), cfg(1)], [d / "m0", d / "m1"]).run()
    alone = losses(d / "alone")
    rel = lambda x: np.abs(x - alone) / np.abs(alone)  # noqa: E731
    print(json.dumps({"arch": a.arch, "optim": a.optim, "size": a.size, "eps": a.eps,
                      "alone": alone.round(7).tolist(), "perturbed_rel": rel(losses(d / "perturbed")).tolist(),
                      "sweep_member_rel": rel(losses(d / "m1")).tolist()}))


if __name__ == "__main__":
    main()
