"""Every recipe with every backbone family: 30-step fine-tuning with a frozen partition,
30 steps of DANN, a linear probe on the fine-tuned backbone, bf16 compute and a 2-member
vectorized sweep, on digits at 32 px with each family's smallest architecture.

References: the run's own starting point for the frozen partition (its parameters and
BatchNorm statistics stay bit-identical, the rest moves), the loss at the start for
training (it falls), an uninterrupted single run for the sweep (members equal runs alone).
"""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from jtl.models.backbones import FAMILIES, register_family
from jtl.train.loop import Trainer
from jtl.train.vector import VectorTrainer
from train_helpers import tiny_config

SMALL_SWIN = "swin_small_test"

# (arch, module that registers its family, freeze regex: the family's input end). About 3
# CPU-minutes each: in `make test-slow`; `make test` walks a toy family through fine-tuning
# and DANN (tests/test_walkthrough.py).
CASES = [
    pytest.param("cifar_resnet8", "jtl.models.resnet", r"^backbone/(conv1|bn1|layer1_)", id="resnet"),
    pytest.param("vit_tiny_patch16_224", "jtl.models.vit", r"^backbone/(patch_embed/|cls_token$|pos_embed$|blocks_0/)",
                 id="vit"),
    pytest.param("convnext_atto", "jtl.models.convnext", r"^backbone/(stem_\d|stages_0)/", id="convnext"),
    pytest.param("mobilenet_v3_large", "jtl.models.mobilenet", r"^backbone/features_[0-3]/", id="mobilenet"),
    pytest.param("densenet121", "jtl.models.densenet", r"^backbone/(conv0|norm0|denseblock1)/", id="densenet"),
    pytest.param("alexnet", "jtl.models.vgg", r"^backbone/features_[0-3]/", id="alexnet"),  # at 64 px (its 11x11/4 stem)
    pytest.param("timm_efficientnet_b0", "jtl.models.efficientnet", r"^backbone/features_(0|1_\d)/", id="efficientnet"),
    pytest.param("inception_v3", "jtl.models.inception", r"^backbone/Conv2d_", id="inception"),  # at 75 px, its least
    pytest.param(SMALL_SWIN, "jtl.models.swin", r"^backbone/(patch_embed|layers_0)/", id="swin"),
]
SIZES = {"alexnet": 64, "inception_v3": 75}
# DenseNet-121 and EfficientNet-B0 at 32 px, batch 16, amplify roundoff: the same run alone, with
# every initial parameter scaled by (1 + 1e-7 u), u ~ N(0, 1), moved DenseNet's third loss by
# 5.5e-3 relative under SGD and 1.6e-2 under AdamW, more than the 2-member sweep's gap (2.2e-3 SGD,
# 1.3e-4 AdamW), its first two losses within 2e-6; it moved EfficientNet's second loss by 1.1e-4
# (SGD) and 1.6e-4 (AdamW) and its third by 2.2e-3 (SGD), where the sweep's gaps were 1.7e-4 and
# 4.0e-4 at the second and 6.3e-4 and 4.1e-4 at the third (scripts/roundoff_sensitivity.py,
# docs/benchmarks.md). Inception-v3 at 75 px trains chaotically (its step-1 gradient norm is
# about 5e3 in jtl and 8e3 in torchvision, from torchvision's std-0.1 initialisation): the same
# perturbation moved its second and third losses by 8% and 13% (AdamW), 17% and 12% (SGD), the
# sweep's gaps were 11% and 0.8%, so past the first loss its case only catches divergence.
# {arch: (first step roundoff shows at, its tolerance)}; the first loss, before any update, is
# held to 2e-5 for every family.
ROUNDOFF_GROWTH = {"densenet121": (3, 1e-2), "timm_efficientnet_b0": (2, 2e-3), "inception_v3": (2, 0.3)}


@pytest.fixture(autouse=True)
def _small_swin():
    """Swin-T's sides must be multiples of 224 px (its 7x7 windows at every stage): the Swin
    case is the same module with 2x2 patches, 2x2 windows and two stages (32 px: 16x16 and
    8x8 maps of whole, shifted windows), registered as a family for this module only."""
    from jtl.models import swin

    arch = {**swin.ARCHS["swin_tiny_patch4_window7_224"], "embed_dim": 24, "depths": (2, 2), "num_heads": (2, 4),
            "window_size": 2, "patch_size": 2}
    register_family(dataclasses.replace(swin.FAMILY, name="swin_small_test", archs={SMALL_SWIN: arch},
                                        torch_archs=(), docs={}))
    yield
    FAMILIES.pop("swin_small_test")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def _cfg(arch, **kw):
    base = {"model.name": arch, "data.image_size": SIZES.get(arch, 32), "data.channels": 3, "batch_size": 16, "total_steps": 30,
            "optim.name": "adamw", "optim.lr": 1e-3, "optim.weight_decay": 0.01, **kw}
    return tiny_config(**base)


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _losses(wd, key="train/loss"):
    return [json.loads(r)[key] for r in (wd / "metrics.jsonl").read_text().splitlines() if key in r]


@pytest.mark.slow
@pytest.mark.parametrize("arch,module,freeze", CASES)
def test_every_recipe_trains_the_family(arch, module, freeze, tmp_path):
    __import__(module)
    # Fine-tuning with a frozen partition.
    trainer = Trainer(_cfg(arch, freeze=(freeze,)), tmp_path / "ft")
    before_p, before_s = _flat(trainer.task.state.params), _flat(trainer.task.state.batch_stats)
    trainer.run()
    after_p, after_s = _flat(trainer.state.params), _flat(trainer.state.batch_stats)
    frozen = [k for k in before_p if re.search(freeze, k)]
    assert frozen and len(frozen) < len(before_p)
    for k in before_p:
        if k in frozen:
            assert before_p[k].tobytes() == after_p[k].tobytes(), k
    assert any(not np.array_equal(before_p[k], after_p[k]) for k in before_p if k not in frozen)
    frozen_modules = {k.split("/")[1] for k in frozen}
    for k in before_s:  # statistics of the frozen modules
        if k.split("/")[1] in frozen_modules:
            assert before_s[k].tobytes() == after_s[k].tobytes(), k
    losses = _losses(tmp_path / "ft")
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])

    # A linear probe on the fine-tuned backbone, and bf16 compute.
    Trainer(_cfg(arch, recipe="linear_probe", total_steps=5, **{"model.init": str(tmp_path / "ft"), "optim.lr": 0.1}),
            tmp_path / "probe").run()
    assert np.isfinite(_losses(tmp_path / "probe")).all()
    Trainer(_cfg(arch, total_steps=5, compute_dtype="bfloat16"), tmp_path / "bf16").run()
    assert np.isfinite(_losses(tmp_path / "bf16")).all()

    # Domain adaptation: DANN, with a bottleneck on the pooled feature.
    dann = _cfg(arch, loss={"ce": 1.0, "dann": 1.0}, **{
        "adapt.target": "digits:invert", "adapt.bottleneck_dim": 32, "adapt.disc_hidden": 32,
        "data.eval": ("val=digits:val", "target=digits:invert:test"),
        "optim.groups": (("backbone", r"^backbone/", 0.1), ("heads", r"^(?!backbone/)", 1.0))})
    Trainer(dann, tmp_path / "dann").run()
    assert len(_losses(tmp_path / "dann", "train/loss/dann")) == 30
    assert np.isfinite(_losses(tmp_path / "dann")).all()

    # A 2-member vectorized sweep: each member's losses equal its run alone (to 2e-5, and from
    # the step a family's roundoff grows at, to its measured sensitivity, ROUNDOFF_GROWTH).
    cfgs = [_cfg(arch, total_steps=3, seed=s) for s in (0, 1)]
    VectorTrainer(cfgs, [tmp_path / f"m{s}" for s in (0, 1)]).run()
    Trainer(cfgs[1], tmp_path / "alone1").run()
    member, alone = _losses(tmp_path / "m1"), _losses(tmp_path / "alone1")
    grows_at, rtol = ROUNDOFF_GROWTH.get(arch, (4, 2e-5))
    assert len(member) == len(alone) == 3
    np.testing.assert_allclose(member[:grows_at - 1], alone[:grows_at - 1], rtol=2e-5)
    np.testing.assert_allclose(member[grows_at - 1:], alone[grows_at - 1:], rtol=rtol)
