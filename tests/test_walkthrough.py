"""docs/adding-a-loss.md and docs/adding-a-backbone.md, walked: their code, run as written,
adds a method with its own heads and a backbone family (both outside jtl/, no edit to
jtl/train) that train through the public API."""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from jtl.train.loop import Trainer
from test_adapt import da_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-loss.md"


def _section_code(title: str, doc: Path = DOC) -> str:
    text = doc.read_text()
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


BACKBONE_DOC = DOC.with_name("adding-a-backbone.md")


def test_a_backbone_family_outside_jtl_trains_frozen_and_adapted(tmp_path):
    """docs/adding-a-backbone.md: the toy family and its config, written to files as printed,
    train through `jtl train` with a frozen first stage, and then with DANN."""
    from jtl.train.checkpoint import restore_variables
    from train_helpers import run_jtl

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "my_backbones.py").write_text(_section_code("## 2. A toy family", BACKBONE_DOC))
    (configs / "my_tiny.py").write_text(_section_code("## 3. Using it", BACKBONE_DOC))
    short = ["--config.total_steps=5", "--config.checkpoint_every=0", "--config.eval_every=0", "--config.progress=false"]
    wd = tmp_path / "tiny"
    rc, _, err = run_jtl("train", "--config", configs / "my_tiny.py", "--workdir", wd, *short)
    assert rc == 0, err[-2000:]
    import sys

    family = sys.modules["my_backbones"]
    model = family.TinyCNN((16, 32), num_classes=10)
    start = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))  # the run's seed-0 draw
    end = restore_variables(wd, "latest")
    for name in ("stage1_conv", "stage1_bn"):  # frozen: bit-identical parameters and statistics
        for a, b in zip(jax.tree.leaves(end["params"]["backbone"][name]), jax.tree.leaves(start["params"][name])):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name
    for a, b in zip(jax.tree.leaves(end["batch_stats"]["backbone"]["stage1_bn"]),
                    jax.tree.leaves(start["batch_stats"]["stage1_bn"])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert not np.allclose(end["params"]["backbone"]["stage2_conv"]["kernel"], start["params"]["stage2_conv"]["kernel"])
    assert not np.allclose(end["params"]["head"]["kernel"], start["params"]["fc"]["kernel"])

    rc, _, err = run_jtl("train", "--config", configs / "my_tiny.py", "--workdir", tmp_path / "dann", *short,
                         "--config.freeze=()", "--config.adapt.target=digits:invert",
                         "--config.loss={'ce': 1.0, 'dann': 1.0}", "--config.adapt.bottleneck_dim=16",
                         "--config.adapt.disc_hidden=16", "--config.log_every=1")
    assert rc == 0, err[-2000:]
    rows = [json.loads(r) for r in (tmp_path / "dann" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss/dann" in r] == [1, 2, 3, 4, 5]
