"""Transfer recipes through the one trainer: linear probe on cached features, regularizers."""

import jax
import numpy as np
import pytest

from jtl.train.loop import Trainer
from train_helpers import losses, tiny_config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A short 'pretraining' run on digits classes 0-4."""
    import os

    os.environ["JTL_DATA_DIR"] = str(tmp_path_factory.getbasetemp() / "data")
    wd = tmp_path_factory.mktemp("source")
    cfg = tiny_config(total_steps=30, **{"model.num_classes": 5, "data.classes": (0, 1, 2, 3, 4)})
    Trainer(cfg, wd).run()
    return wd


def _target_cfg(source_run, **kw):
    return tiny_config(**{"model.num_classes": 5, "data.classes": (5, 6, 7, 8, 9), "model.init": str(source_run), **kw})


def test_linear_probe_caches_backbone_features(source_run, tmp_path):
    cfg = _target_cfg(source_run, recipe="linear_probe", total_steps=40, **{"optim.lr": 0.5})
    trainer = Trainer(cfg, tmp_path)
    summary = trainer.run()
    cached = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(cached) == 2 and any(n.startswith("train-") for n in cached) and any(n.startswith("val-") for n in cached)
    # The cached features are the pretrained backbone's pooled outputs (independent forward pass).
    from jtl.models import create_model
    from jtl.train.checkpoint import restore_variables
    from jtl import data as jdata

    src = restore_variables(source_run)
    z = np.load(next((tmp_path / "features").glob("val-*.npz")))
    norm = trainer.task.normalization
    val = jdata.load("digits", "val", classes=(5, 6, 7, 8, 9), seed=0)
    x = np.stack([val[i]["image"] for i in range(len(val))]).astype(np.float32) / 255.0
    x = (x - np.asarray(norm["mean"])) / np.asarray(norm["std"])
    backbone = {"params": src["params"]["backbone"], "batch_stats": src["batch_stats"]["backbone"]}
    pooled = create_model("cifar_resnet8", None).apply(backbone, x)  # the ResNet module alone
    np.testing.assert_allclose(z["features"], pooled, rtol=1e-4, atol=1e-5)
    assert summary["final"]["val"]["top1"] > 0.5  # 5 classes: chance is 0.2
    # Re-running in a new workdir with the same source re-extracts; the same workdir re-uses the cache.
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "features").iterdir()}
    Trainer(cfg.copy_and_resolve_references(), tmp_path).task  # builds the task again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "features").iterdir()} == mtimes


@pytest.mark.parametrize("piece", ["l2sp", "delta", "bss", "lwf"])
def test_regularized_finetuning_runs_and_logs_each_piece(source_run, tmp_path, piece):
    cfg = _target_cfg(source_run, total_steps=4, loss=(("ce", 1.0), (piece, 0.01)))
    trainer = Trainer(cfg, tmp_path)
    trainer.run()
    import json

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [r[f"train/loss/{piece}"] for r in rows]
    assert all(np.isfinite(values))
    if piece == "l2sp":
        # Step 1 starts at the anchor: the distance is 0, then grows.
        assert values[0] == pytest.approx(0.0, abs=1e-6) and values[-1] > 0
    else:
        # DELTA compares train-mode maps with the starting model's eval-mode maps: positive from step 1.
        assert all(v > 0 for v in values)
    assert all(np.isfinite(list(losses(tmp_path).values())))
