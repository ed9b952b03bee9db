"""docs/adding-a-loss.md, walked: its code, run as written, adds a method with its own heads
(outside jtl/, no edit to jtl/train) that trains through the public API."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from jtl.train.loop import Trainer
from test_adapt import da_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-loss.md"


def _section_code(title: str) -> str:
    text = DOC.read_text()
    section = text[text.index(title):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def test_a_method_with_its_own_heads_trains_five_steps(tmp_path):
    exec(compile(_section_code("### 2b. A piece with its own heads"), str(DOC), "exec"), {})  # registers dann2
    cfg = da_config("source_only", total_steps=5, loss=(("ce", 1.0), ("dann2", 1.0)))
    trainer = Trainer(cfg, tmp_path)
    before = jax.device_get(trainer.task.state.params)
    trainer.run()
    after = jax.device_get(trainer.state.params)
    hidden, feat, classes = cfg.adapt.disc_hidden, cfg.adapt.bottleneck_dim, cfg.model.num_classes
    # The declared heads exist with the declared shapes ...
    assert after["disc_feat"]["fc0"]["kernel"].shape == (feat, hidden)
    assert after["disc_feat"]["fc1"]["kernel"].shape == (hidden, hidden)
    assert after["disc_feat"]["out"]["kernel"].shape == (hidden, 1)
    assert after["disc_pred"]["fc0"]["kernel"].shape == (classes, hidden)
    assert "fc1" not in after["disc_pred"]
    # ... and are trained: every kernel of both discriminators moved.
    for head in ("disc_feat", "disc_pred"):
        for layer, p in after[head].items():
            assert not np.allclose(p["kernel"], before[head][layer]["kernel"]), (head, layer)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 5 and all("train/loss/dann2" in r and "train/dann2/acc_pred" in r for r in rows)
