"""Rows of docs/reliability.md's bad-input table that had no test (70, 71, 75, 78, 79) and the rows
added for the one-line errors that had none (81-97).

Each test provokes the error through the entry point its row names (``jtl.cli.main`` in this
process; two real processes for the multi-process row) and checks exit status 2, exactly one
``jtl: error:`` line holding the message's stable part, no traceback, and that nothing was run
or changed: no ``metrics.jsonl`` or checkpoint in a refused ``jtl train`` workdir, a run
directory byte-identical after a refused ``jtl eval``.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import config_file_text, one_line_error, run_jtl, tiny_config

DG_DOMAINS = ("digits", "digits:invert")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step cifar_resnet8 run on digits (8 px, no evaluation): the run ``jtl eval`` adapts and a
    source-free run starts from. The DG domains are prepared here too (preparing prints progress)."""
    from jtl import data as jdata
    from jtl.train import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
        for name in DG_DOMAINS:
            jdata.load(name, "train")
        workdir = tmp_path_factory.mktemp("rows") / "run"
        train(tiny_config(total_steps=1, **{"data.eval": ()}), workdir)
    return workdir


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Config files: the tiny run's, a DG run's on DG_DOMAINS, a source-free run's (ARG: model.init)."""
    d = tmp_path_factory.mktemp("configs")
    (d / "tiny.py").write_text(config_file_text(steps=4, every=2, log_every=1))
    (d / "dg.py").write_text(f"""
def get_config(arg=None):
    return {{"model": {{"name": "cifar_resnet8", "num_classes": 10}},
            "data": {{"eval": (), "image_size": 8, "channels": 1, "normalize": "dataset", "augment": (),
                     "val_fraction": 0.2}},
            "dg": {{"domains": {DG_DOMAINS!r}, "names": ("a", "b"), "test": (1,)}},
            "batch_size": 8, "eval_batch_size": 64, "total_steps": 2, "eval_every": 1, "checkpoint_every": 0,
            "log_every": 1, "progress": False, "optim": {{"name": "adam", "lr": 1e-3, "schedule": "constant"}}}}
""")
    (d / "sfda.py").write_text("""
def get_config(arg=None):
    return {"model": {"name": "cifar_resnet8", "num_classes": 10, "init": arg},
            "data": {"train": "digits", "eval": (), "image_size": 8, "channels": 1, "augment": ()},
            "adapt": {"target": "digits", "target_split": "test", "source_free": True},
            "loss": {"im": 1.0}, "batch_size": 16, "total_steps": 2, "checkpoint_every": 0, "progress": False}
""")
    base = ('def get_config(arg=None):\n    return {"model": {"name": "cifar_resnet8", "num_classes": 10}, '
            '"data": {"train": "digits", "image_size": 8, "channels": 1}}\n')
    for name, runs in (("twice", '[{"optim.lr": 0.1}, {"optim.lr": 0.1}]'), ("none", "[]"), ("dict", '{"x": 1}')):
        (d / f"sweep_{name}.py").write_text(base + f"def get_sweep():\n    return {runs}\n")
    return d


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its bytes."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refused_train(config, workdir: Path, *overrides, patterns) -> str:
    """``jtl train`` refused in one line holding ``patterns``; nothing logged or checkpointed (an error
    raised once the trainer has started, like lwf's, leaves an empty ``checkpoints/``, which does not
    keep the corrected command out of the workdir)."""
    line = one_line_error(run_jtl("train", "--config", config, "--workdir", workdir, *overrides), *patterns)
    assert not (workdir / "metrics.jsonl").exists() and not list(workdir.glob("checkpoints/*"))
    return line


def refused_eval(run_dir: Path, *args, patterns) -> str:
    """``jtl eval --workdir RUN --split digits:test ARGS`` refused in one line; the run unchanged."""
    before = snapshot(run_dir)
    line = one_line_error(run_jtl("eval", "--workdir", run_dir, "--split", "digits:test", *args), *patterns)
    assert snapshot(run_dir) == before
    return line


# ---------------------------------------------------------------- rows 70 and 71: jtl eval --adapt


def test_adapt_params_not_a_regex(run):
    refused_eval(run, "--adapt", "tent", "--adapt-params", "(",
                 patterns=["--adapt-params '(' is not a regex: missing ), unterminated subpattern"])


@pytest.mark.parametrize("arch", ["vgg11", "alexnet"])
def test_model_without_normalisation_layer(arch):
    """VGG-11 and AlexNet have no normalisation layer: the parameters TENT/EATA/SAR adapt by default
    do not exist. Checked on the real architectures' parameter trees (shapes only: a run of these
    100M-parameter models is far beyond the test budget); ``jtl eval`` prints this JtlError as the
    other rows' (the regex row above is the same function, through the CLI)."""
    import jax
    import jax.numpy as jnp

    from jtl.errors import JtlError
    from jtl.models import create_model
    from jtl.tta.params import adapt_labels

    params = jax.eval_shape(create_model(arch, num_classes=10).init, jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3)))["params"]
    with pytest.raises(JtlError) as e:
        adapt_labels(params)
    assert str(e.value) == ("the model has no normalisation layer (no module with exactly scale and bias) to adapt; "
                            "name the parameters with --adapt-params REGEX")
    labels = adapt_labels(params, "classifier")  # what the message asks for works
    assert "adapt" in jax.tree.leaves(labels) and "frozen" in jax.tree.leaves(labels)


def test_fisher_split_without_a_split(run):
    refused_eval(run, "--adapt", "eata", "--fisher-split", "digits",
                 patterns=["--fisher-split 'digits' is not NAME:SPLIT"])


def test_adaptation_that_diverges(run):
    """An SGD step of 1e30 on the BatchNorm affine parameters: the next batches' logits are not finite."""
    refused_eval(run, "--adapt", "tent", "--lr", "1e30", "--batch-size", "64",
                 patterns=["tent diverged (non-finite logits); lower --lr"])


def test_adapt_in_a_multi_process_run(run, tmp_path):
    """Two real processes (gloo over TCP on this host) run ``jtl eval --adapt tent``: both refuse."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JTL_") or k == "JTL_DATA_DIR"}
    before = snapshot(run)
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "jtl.cli", "eval", "--workdir", str(run), "--split", "digits:test", "--adapt",
               "tent", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
        err = open(tmp_path / f"p{i}.err", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))
        err.close()
    codes = [p.wait(timeout=240) for p in procs]
    for i, rc in enumerate(codes):
        text = (tmp_path / f"p{i}.err").read_text()
        one_line_error((rc, "", text), "--adapt runs in one process (one stream, on one device); start it "
                                       "without --num-processes / JTL_NUM_PROCESSES", alone=True)
    assert snapshot(run) == before


# ---------------------------------------------------------------- row 75: source-free starts


@pytest.mark.parametrize("overrides,pattern", [
    (["--config.data.image_size=10"], "was trained at image_size=8, resize=0, eval_crop=none, channels=1; set "
                                      "data.image_size, data.resize, data.eval_crop, data.channels to those"),
    (["--config.data.channels=3"], "was trained at image_size=8, resize=0, eval_crop=none, channels=1"),
    (["--config.adapt.target="], "adapt.source_free needs adapt.target, the unlabelled target dataset"),
    (["--config.grad_accum_steps=2"], "grad_accum_steps > 1 is not supported with source-free adaptation"),
    (["--config.batch_size=512"], "adapt.target digits:test has 359 examples, fewer than batch_size=512; "
                                  "lower batch_size"),
], ids=["image_size", "channels", "no_target", "grad_accum", "target_smaller_than_batch"])
def test_source_free_start_mistakes(run, configs, tmp_path, overrides, pattern):
    refused_train(f"{configs / 'sfda.py'}:{run}", tmp_path / "w", *overrides, patterns=[pattern])


# ---------------------------------------------------------------- row 78 and rows 82-84: domain generalization

DG_ROWS = {
    "one_domain": (["--config.dg.domains=('digits',)", "--config.dg.names=()", "--config.dg.test=()"],
                   "dg.domains needs at least two domains, got 1"),
    "names_length": (["--config.dg.names=('a','b','c')"], "dg.names has 3 names for 2 dg.domains"),
    "names_repeated": (["--config.dg.names=('a','a')"], "dg.names must be distinct, got ('a', 'a')"),
    "with_adapt_target": (["--config.adapt.target=digits"],
                          "dg.domains cannot be combined with adapt.target or a linear probe"),
    "domain_smaller_than_share": (["--config.batch_size=4096"], "source domain digits has ",
                                  "training examples, fewer than batch_size / D = 4096"),
    "anneal_steps_differ": (["--config.loss={'irm':1.0,'vrex':1.0}",
                             "--config.loss_options={'irm':{'anneal_steps':2},'vrex':{'anneal_steps':5}}"],
                            "irm and vrex anneal at different steps [2, 5]; use one anneal_steps"),
    "swad_without_eval": (["--config.dg.swad=True", "--config.save_predictions=True", "--config.eval_every=0"],
                          "dg.swad needs eval_every > 0: its window is chosen from the validation loss at each eval"),
    "swad_window_option": (["--config.dg.swad=True", "--config.save_predictions=True",
                            "--config.dg.swad_n_tolerance=0"],
                           "dg.swad_n_converge, dg.swad_n_tolerance and dg.swad_bn_batches must be >= 1"),
    "mixstyle_not_resnet": (["--config.dg.mixstyle=('layer1',)", "--config.model.name=vgg11"],
                            "dg.mixstyle needs a ResNet-family model; vgg11 is vgg"),
    "mixstyle_unknown_stage": (["--config.dg.mixstyle=('layer4',)"],
                               "dg.mixstyle: cifar_resnet8 has no stage 'layer4'; its stages: layer1, layer2, layer3"),
    "mixstyle_mode": (["--config.dg.mixstyle=('layer1',)", "--config.dg.mixstyle_mode=x"],
                      "dg.mixstyle_mode must be random or crossdomain, got 'x'"),
    # row 82
    "freeze_bn_mode": (["--config.dg.freeze_bn=some"], "dg.freeze_bn must be '', 'stats' or 'all', got 'some'"),
    "freeze_bn_not_resnet": (["--config.dg.freeze_bn=stats", "--config.model.name=vgg11"],
                             "dg.freeze_bn needs a ResNet-family model (its frozen stages switch exactly the "
                             "BatchNorms to running averages); vgg11 is vgg"),
    # row 83
    "val_split_unknown": (["--config.dg.val_split=random"], "dg.val_split must be one of carve, published, tllib, "
                                                            "got 'random'"),
    "val_split_published_missing": (["--config.dg.val_split=published",
                                     "--config.dg.domains=('digits:invert','digits:invert#1')"],
                                    "dg.val_split=published: digits:invert has no val split of its own; use "
                                    "dg.val_split=carve with data.val_fraction"),
    "val_split_tllib_no_fraction": (["--config.dg.val_split=tllib", "--config.data.val_fraction=0.0"],
                                    "dg.val_split=tllib needs data.val_fraction in (0, 1): every domain's val split "
                                    "is what model selection reads"),
    # row 84
    "dropout": (["--config.dg.dropout=1.0"], "dg.dropout must be in [0, 1), got 1.0"),
}


@pytest.mark.parametrize("case", list(DG_ROWS))
def test_dg_config_row(run, configs, tmp_path, case):
    overrides, *patterns = DG_ROWS[case]
    refused_train(configs / "dg.py", tmp_path / "w", *overrides, patterns=patterns)


# ---------------------------------------------------------------- row 79: jtl collect --domainbed


def test_collect_domainbed_refusals(run, tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run_jtl("collect", "--domainbed", tmp_path / "empty"), "no finished domain-generalization runs "
                   "(config.json with dg.domains and summary.json)", alone=True)
    one_line_error(run_jtl("collect", "--domainbed", run), "no finished domain-generalization runs", alone=True)
    one_line_error(run_jtl("collect", "--domainbed", tmp_path / "nope"), f"no such directory: {tmp_path / 'nope'}",
                   alone=True)
    damaged = tmp_path / "sweep" / "r0" / "config.json"  # was a JSONDecodeError traceback
    damaged.parent.mkdir(parents=True)
    damaged.write_text('{"dg": ')
    one_line_error(run_jtl("collect", "--domainbed", tmp_path / "sweep"),
                   f"config {damaged} is unreadable (JSONDecodeError: Expecting value", "repair or remove it",
                   alone=True)
    assert damaged.read_text() == '{"dg": '
    damaged.write_text('{"dg": {"domains": ["digits", "digits:invert"], "test": [1]}, "seed": 0, "loss": {}}')
    (damaged.parent / "summary.json").write_bytes(b"\xff\xfe")
    one_line_error(run_jtl("collect", "--domainbed", tmp_path / "sweep"),
                   f"summary {damaged.parent / 'summary.json'} is unreadable (UnicodeDecodeError: ", alone=True)


# ---------------------------------------------------------------- rows 81, 85-88: config values

CONFIG_ROWS = {
    # row 81
    "resize_below_image_size": (["--config.data.resize=4"], "data.resize must be 0 (off) or at least "
                                "data.image_size=8 (crops are cut from the resized image), got 4"),
    "eval_crop_unknown": (["--config.data.eval_crop=middle"], "data.eval_crop must be none or center, got 'middle'"),
    "augment_unknown": (["--config.data.augment=('flip','spin')"],
                        "data.augment: unknown augmentation 'spin'; known: crop, center_crop, random_crop, flip"),
    "augment_two_crops": (["--config.data.augment=('crop','center_crop')"],
                          "data.augment: augment takes one crop of crop, center_crop, random_crop; "
                          "got ['crop', 'center_crop']"),
    # row 85
    "schedule_unknown": (["--config.optim.schedule=foo"], "optim.schedule must be constant, cosine, step or inv, "
                                                          "got 'foo'"),
    "loss_weight_not_a_number": (["--config.loss={'ce':'x'}"], "loss entries must be name: finite weight, "
                                                               "got 'ce': 'x'"),
    "loss_piece_twice": (["--config.loss=(('ce',1.0),('ce',1.0))"], "loss names a piece twice: ['ce', 'ce']"),
    "eval_label_twice": (["--config.data.eval=('a=digits:val','a=digits:test')"],
                         "two data.eval entries are labelled 'a'; write LABEL=NAME:SPLIT"),
    # row 86
    "freeze_with_adaptation": (["--config.adapt.target=digits", "--config.freeze=('^backbone/',)"],
                               "freeze is not supported with domain adaptation (adapt.target); use lr multipliers"),
    "adapt_bottleneck_unknown": (["--config.adapt.target=digits", "--config.adapt.bottleneck=foo"],
                                 "adapt.bottleneck must be one of bn_relu, bn_relu_dropout; got 'foo'"),
    "adapt_classifier_width": (["--config.adapt.target=digits", "--config.adapt.classifier_width=0"],
                               "adapt.classifier_width must be positive, got 0"),
    # row 87
    "val_fraction_out_of_range": (["--config.data.val_fraction=1.5"],
                                  "val_fraction=1.5 and test_fraction=0.0 must be in [0, 1) and sum to < 1"),
    "limit_beyond_split": (["--config.data.limit=100000"], "digits: limit=100000 must be between 1 and the split "
                                                           "size 1078"),
    "shift_parameter_not_integer": (["--config.data.train=digits:angle@x"],
                                    "shift parameter must be an integer, got 'angle@x' in 'digits:angle@x'"),
    "folder_without_path": (["--config.data.train=folder:"], "'folder:': give a path after 'folder:'"),
    "shift_seed_not_integer": (["--config.data.train=digits:invert#x"],
                               "'digits:invert#x': the shift seed after '#' must be an integer"),
    "lwf_without_init": (["--config.loss={'ce':1.0,'lwf':1.0}"],
                         "loss piece 'lwf' needs a starting model with a classifier head (model.init)"),
    # row 88
    "vit_size_not_patch_multiple": (["--config.model.name=vit_tiny_patch16_224", "--config.data.image_size=20"],
                                    "ViT input 20x20 is not a multiple of the patch size 16; use image_size = k*16"),
    "vgg_input_too_small": (["--config.model.name=vgg11", "--config.data.image_size=8"],
                            "the input shrinks to a 1x1 map before a 2x2 max pool; use a larger data.image_size"),
}


@pytest.mark.parametrize("case", list(CONFIG_ROWS))
def test_config_row(run, configs, tmp_path, case):
    overrides, pattern = CONFIG_ROWS[case]
    refused_train(configs / "tiny.py", tmp_path / "w", *overrides, patterns=[pattern])


def test_linear_probe_with_freeze(run, configs, tmp_path):
    refused_train(configs / "tiny.py", tmp_path / "w", "--config.recipe=linear_probe", f"--config.model.init={run}",
                  "--config.freeze=('^backbone/',)",
                  patterns=["recipe 'linear_probe' trains only the linear head: leave freeze empty"])


def test_config_argument_unknown_option(tmp_path):
    refused_train("configs/dg_rotated_fmnist.py:erm,foo=1", tmp_path / "w",
                  patterns=["config argument 'erm,foo=1': unknown option 'foo' (known: test, steps, per_domain"])


# ---------------------------------------------------------------- row 89: command-line options


def test_command_line_option_rows(run, configs, tmp_path):
    one_line_error(run_jtl("train", "--config", configs / "tiny.py"),
                   "jtl train needs --workdir DIR (the run's directory)", alone=True)
    sweep = ["sweep", "--config", "configs/dg_rotated_fmnist.py:sweep,algorithms=erm", "--workdir", tmp_path / "sw"]
    one_line_error(run_jtl(*sweep, "--max-members", "0"), "--max-members must be >= 1, got 0", alone=True)
    one_line_error(run_jtl(*sweep, "--shard", "4/4"),
                   "--shard must be I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got '4/4'", alone=True)
    assert not (tmp_path / "sw").exists()
    one_line_error(run_jtl("collect", run, "--plot-out", tmp_path / "p.png"),
                   "--plot-out needs --plot KEY (the config key on the x axis)", alone=True)
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------- rows 91-97: more command-line options

CLI_ROWS = {  # (arguments with RUN = the tiny run and TMP = the test's directory, message)
    # row 91
    "port_file_without_arch": (["port", "--src", "TMP/f.pth", "--out", "TMP/out"],
                               "--arch is required when --src is a file"),
    "port_registry_other_arch": (["port", "--src", "resnet18.tv_in1k", "--arch", "resnet50", "--out", "TMP/out"],
                                 "--src resnet18.tv_in1k holds resnet18 weights, not --arch resnet50"),
    # row 92
    "eval_not_a_run": (["eval", "--workdir", "TMP", "--split", "digits:test"], "TMP is not a jtl run directory "
                                                                               "(no config.json)"),
    "rank_not_a_run": (["rank", "--models", "TMP", "--dataset", "digits"], "TMP is not a jtl run directory"),
    "rank_unknown_score": (["rank", "--models", "RUN", "--dataset", "digits", "--scores", "foo"],
                           "--scores 'foo': choose from logme, leep, nce, h_score, transrate"),
    "rank_negative_limit": (["rank", "--models", "RUN", "--dataset", "digits", "--limit", "-1"],
                            "--limit must be >= 0 (0: all images), got -1"),
    "rank_classes_not_ids": (["rank", "--models", "RUN", "--dataset", "digits", "--classes", "a,b"],
                             "--classes must be comma-separated class ids, got 'a,b'"),
    # row 93
    "collect_no_runs": (["collect", "TMP"], "no runs under TMP (no sweep.json, config.json or summary.json found)"),
    "collect_unknown_metric": (["collect", "RUN", "--metric", "val/top9"], "no finished run has metric 'val/top9'"),
    "collect_unknown_selection": (["collect", "RUN", "--select", "foo"],
                                  "unknown selection method 'foo': choose from source_val, dev, snd, im, oracle"),
    # row 94
    "coordinator_not_host_port": (["train", "--config", "TINY", "--workdir", "TMP/w", "--coordinator", "foo",
                                   "--num-processes", "2", "--process-id", "0"],
                                  "coordinator 'foo' must be HOST:PORT, e.g. 10.0.0.1:1234 (process 0's address)"),
    "process_id_out_of_range": (["train", "--config", "TINY", "--workdir", "TMP/w", "--coordinator", "h:1",
                                 "--num-processes", "2", "--process-id", "5"],
                                "process id 5 of 2 processes: need 0 <= id < count"),
    "multi_process_incomplete": (["train", "--config", "TINY", "--workdir", "TMP/w", "--num-processes", "2"],
                                 "a multi-process run needs JTL_COORDINATOR, JTL_NUM_PROCESSES and JTL_PROCESS_ID "
                                 "(or --coordinator, --num-processes, --process-id); missing: JTL_COORDINATOR, "
                                 "JTL_PROCESS_ID"),
    # row 95
    "sweep_devices_per_group": (["sweep", "--config", "configs/dg_rotated_fmnist.py:sweep", "--workdir", "TMP/w",
                                 "--devices-per-group", "0"], "--devices-per-group must be >= 1, got 0"),
    "sweep_slurm_option_without_slurm": (["sweep", "--config", "configs/dg_rotated_fmnist.py:sweep", "--workdir",
                                          "TMP/w", "--sbatch", "qos=high"],
                                         "--sbatch is a SLURM option: add --launcher slurm"),
    "data_option_not_key_value": (["data", "stats", "digits", "-o", "limit"],
                                  "option 'limit' must look like KEY=VALUE"),
    # row 96
    "da_results_seeds_not_integers": (["da-results", "--config", "configs/da_digits.py", "--seeds", "a,b",
                                       "--workdir", "TMP/w"], "--seeds must be comma-separated integers, got 'a,b'"),
    "da_results_no_seed": (["da-results", "--config", "configs/da_digits.py", "--seeds", ",", "--workdir", "TMP/w"],
                           "--seeds names no seed"),
    "da_results_unknown_method": (["da-results", "--config", "configs/da_digits.py", "--methods", "foo",
                                   "--workdir", "TMP/w"], "unknown method or control foo (methods: source_only, dann"),
    # row 97
    "sweep_same_overrides_twice": (["sweep", "--config", "CFG/sweep_twice.py", "--workdir", "TMP/w"],
                                   "CFG/sweep_twice.py: get_sweep returns the same overrides twice"),
    "sweep_no_runs": (["sweep", "--config", "CFG/sweep_none.py", "--workdir", "TMP/w"],
                      "CFG/sweep_none.py: get_sweep returned no runs"),
    "sweep_not_a_list": (["sweep", "--config", "CFG/sweep_dict.py", "--workdir", "TMP/w"],
                         "CFG/sweep_dict.py: get_sweep must return a list of override dicts"),
}


@pytest.mark.parametrize("case", list(CLI_ROWS))
def test_cli_row(run, configs, tmp_path, monkeypatch, case):
    for var in ("JTL_COORDINATOR", "JTL_NUM_PROCESSES", "JTL_PROCESS_ID", "JTL_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "f.pth").write_bytes(b"not a checkpoint")
    fill = lambda a: (a.replace("RUN", str(run)).replace("TMP", str(tmp_path)).replace("TINY", str(configs / "tiny.py"))
                      .replace("CFG", str(configs)))
    args, pattern = CLI_ROWS[case]
    before = snapshot(run)
    one_line_error(run_jtl(*map(fill, args)), fill(pattern), alone=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pth"] and snapshot(run) == before
