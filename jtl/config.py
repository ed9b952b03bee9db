"""The run configuration: defaults, loading from files, overrides and validation.

A config file is Python with ``get_config(arg=None) -> ml_collections.ConfigDict``
(``configs/FILE.py:ARG`` passes ``ARG``). Its fields are merged over
:func:`defaults`, so a file states only what it changes; a key that the defaults
do not have is an error (typos must not pass silently), and so is a value of
the wrong type or out of range.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from typing import Any, Iterable, Sequence

import ml_collections

from jtl.config_optim import check_optim
from jtl.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

# Seeds derive jax keys as seed + 1 (int32) and numpy generators (non-negative): 0..2^31-2.
SEED_MAX = 2**31 - 2
# Keys of an eval split's metrics (higher is better for each); best_metric is "LABEL/KEY".
EVAL_KEYS = ("top1", "top5", "macro_precision", "macro_recall", "macro_f1")


def defaults() -> ConfigDict:
    """Every key a run understands, with its default."""
    c = ConfigDict()
    c.recipe = "train"  # "train" (fine-tuning / from scratch) or "linear_probe" (cached features)
    c.seed = 0
    c.batch_size = 128
    c.eval_batch_size = 256
    c.total_steps = 1000
    c.eval_every = 500  # 0: only at the end
    c.log_every = 50
    c.checkpoint_every = 500  # 0: only at the end
    c.keep_checkpoints = 2  # the last N, plus the best by `best_metric`
    c.best_metric = ""  # e.g. "val/top1" (higher is better); "" = none
    c.grad_accum_steps = 1
    c.compute_dtype = "float32"  # or "bfloat16" (parameters stay float32)
    c.progress = True
    c.save_predictions = False  # eval logits/features/labels per eval step, for model selection

    c.model = ConfigDict()
    c.model.name = "cifar_resnet8"
    c.model.num_classes = 10
    c.model.init = ""  # "": random; a registry name, a `jtl port` dir or a run's workdir

    c.data = ConfigDict()
    c.data.train = "fashion_mnist"
    c.data.train_split = "train"
    c.data.classes = ()  # keep (and relabel 0..k-1) only these classes
    c.data.limit = 0  # labelled budget: a seeded subset of this many examples; 0 = all
    c.data.eval = ("fashion_mnist:test",)  # "NAME:SPLIT" or "LABEL=NAME:SPLIT"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.normalize = "dataset"  # "imagenet" for ported weights ("inception": Inception-v3's), "dataset", "none"
    c.data.augment = ()  # e.g. ("flip", "crop", "jitter"); "center_crop"/"random_crop": fixed image_size windows
    c.data.resize = 0  # R > 0: every image resized to R x R first, crops cut from it (TLlib: 256); 0 = off
    c.data.eval_crop = "none"  # eval: "none" = whole image resized to image_size, "center" = centre crop
    c.data.val_fraction = 0.0  # carve a seeded, stratified "val" split out of "train"
    c.data.test_fraction = 0.0  # and a "test" split (datasets without one: image folders, digits)
    # Held-out splits never evaluated during training: only on request (`jtl eval --split LABEL`,
    # `jtl da-results`' final evaluation); "LABEL=NAME:SPLIT" entries as in data.eval.
    c.data.test = ()
    c.data.on_error = "raise"  # an unreadable image in a folder dataset: "raise" or "skip" (warn, drop it)

    c.optim = ConfigDict()
    c.optim.name = "sgd"  # sgd | adam | adamw
    c.optim.lr = 0.01
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 5e-4
    c.optim.clip_norm = 0.0  # global-norm clipping; 0 = off
    c.optim.layer_decay = 0.0  # layer-wise lr decay d in (0, 1]: layer k of L learns at lr d^(L+1-k); 0 = off
    c.optim.no_decay = ()  # path regexes of parameters without weight decay (e.g. biases, norms, tokens)
    c.optim.schedule = "cosine"  # constant | cosine | step | inv
    c.optim.warmup_steps = 0
    c.optim.step_boundaries = (0.5, 0.75)  # fractions of total_steps (schedule "step")
    c.optim.step_factor = 0.1
    c.optim.inv_gamma = 10.0  # lr * (1 + gamma p)^-power, p = step / total_steps (schedule "inv")
    c.optim.inv_power = 0.75
    # (group, path regex, lr multiplier); every non-frozen parameter must match exactly one.
    # Paths are those of jtl.models.transfer: backbone/..., head/..., bottleneck/..., <extra head>/...
    c.optim.groups = (("head", r"^(?!backbone/)", 1.0), ("backbone", r"^backbone/", 1.0))
    c.freeze = ()  # path regexes of frozen parameters (e.g. r"^backbone/(conv1|bn1|layer1)")

    # Unsupervised domain adaptation: set `target` to train on labelled source + unlabelled target.
    c.adapt = ConfigDict()
    c.adapt.target = ""  # dataset name of the unlabelled target domain, e.g. "fashion_mnist:mnistm"
    c.adapt.source_free = False  # True: adapt the model.init run to the target without source data (SHOT, NRC)
    c.adapt.target_split = "train"
    # The target's own held-out fractions (wherever it is loaded): 0 = every image of target_split is adapted on.
    c.adapt.target_val_fraction = 0.0
    c.adapt.target_test_fraction = 0.0
    c.adapt.bottleneck_dim = 256  # 0: classify the backbone's pooled features directly
    c.adapt.disc_hidden = 1024
    c.adapt.mcd_generator_steps = 4
    # Head switches (jtl.train.adapt_heads; TLlib's heads: docs/adaptation.md, "Against the papers and TLlib")
    c.adapt.bottleneck = "bn_relu"  # or "bn_relu_dropout" (TLlib's MDD)
    c.adapt.classifier = "linear"  # or "mlp" (TLlib's MDD heads), "mlp_bn" (TLlib's MCD heads)
    c.adapt.classifier_width = 1024  # hidden width of the "mlp"/"mlp_bn" classifiers
    c.adapt.disc_norm = "none"  # domain discriminator: "none", "batchnorm" or "dropout" (TLlib's two)
    c.adapt.forward = "joint"  # or "separate": each domain in its own forward pass (BatchNorm per domain)

    # Domain generalization (jtl.dg, DomainBed's protocol): train on dg.domains minus the held-out
    # dg.test (indices), batch_size / D examples of each source domain per step.
    c.dg = ConfigDict()
    c.dg.domains = ()  # every domain of the benchmark (dataset names); empty: not a DG run
    c.dg.names = ()  # their display names (eval labels val_<name>, test_<name>); default d0, d1, ...
    c.dg.test = ()  # indices of the held-out domains, e.g. (5,)
    c.dg.disjoint = True  # domains made from one base dataset keep disjoint base images (i % D)
    c.dg.test_limit = 0  # evaluate at most this many (stratified) test images per held-out domain; 0 = all
    c.dg.algorithm = ""  # the algorithm's name in results tables (configs set it)
    c.dg.hparams_seed = 0  # the random-search draw this run belongs to (results tables group by it)
    c.dg.reset_optimizer = True  # reset the optimizer state when an IRM / V-REx penalty weight jumps
    c.dg.mixstyle = ()  # ResNet stages followed by MixStyle in training, e.g. ("layer1", "layer2")
    c.dg.mixstyle_p = 0.5
    c.dg.mixstyle_alpha = 0.1
    c.dg.mixstyle_mode = "random"  # or "crossdomain"
    c.dg.freeze_bn = ""  # "stats": every BatchNorm on running averages (TLlib); "all": its scale/bias frozen too
    c.dg.dropout = 0.0  # Dropout on the pooled feature before the head, in training (TLlib: 0.1 with freeze_bn)
    c.dg.val_split = "carve"  # or "published" (the dataset's own val), "tllib" (TLlib's split of "all")
    c.dg.swad = False  # SWAD dense weight averaging (needs eval_every and save_predictions)
    c.dg.swad_n_converge = 3
    c.dg.swad_n_tolerance = 6
    c.dg.swad_tolerance_ratio = 0.3
    c.dg.swad_bn_batches = 20

    # Weighted loss pieces sharing one forward pass, {name: weight} in order, e.g. {"ce": 1.0, "l2sp": 0.01}
    # (a file may also give (name, weight) pairs); --config.loss.NAME=W sets or adds one weight.
    c.loss = loss_mapping({"ce": 1.0})
    c.loss_options = ConfigDict()  # per-piece options, e.g. loss_options.l2sp = {"alpha": 0.01}
    c.loss_options.ce = ConfigDict({"label_smoothing": 0.0})
    return c


def load_module(path: str):
    """Execute config file ``path`` as a module (its folder importable, for shared helpers)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_jtl_config", path)
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # config files may import shared helpers beside them
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a broken config file is a user error
        raise ConfigError(f"{path}: cannot build the config ({type(e).__name__}: {e})") from None
    finally:
        sys.path.remove(folder)
    return module


def config_args(arg: str | None, positional: Sequence[str] = (), **defaults: str) -> dict[str, str]:
    """The argument of ``configs/FILE.py:ARG``, parsed one way for every config file.

    ``ARG = P1,P2,...,KEY=VALUE,...``: the leading bare values fill ``positional`` in order,
    the rest are ``KEY=VALUE``. ``defaults`` gives every option's default, and so its known
    keys, e.g. ``config_args("dann,init=runs/s", ("method",), method="source_only", init="")``
    -> ``{"method": "dann", "init": "runs/s"}``. An unknown key or a stray value is an error."""
    out = dict(defaults)
    parts = [p for p in (arg or "").split(",") if p]
    names = list(positional)
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            if not names:
                raise ConfigError(f"config argument {arg!r}: unexpected value {part!r}; "
                                  f"write {','.join(positional) or 'KEY=VALUE'}" + ",KEY=VALUE" * bool(positional))
            out[names.pop(0)] = part
        elif key in defaults and key not in positional:
            out[key] = value
        else:
            known = ", ".join(k for k in defaults if k not in positional) or "none"
            raise ConfigError(f"config argument {arg!r}: unknown option {key!r} (known: {known})")
    return out


def load_config(spec: str, overrides: Iterable[str] = ()) -> ConfigDict:
    """Load ``path/to/file.py[:ARG]``, merge it over the defaults, apply ``key=value`` overrides."""
    path, _, arg = spec.partition(":")
    return resolve(call_config_file(path, "get_config", arg), overrides)


def call_config_file(path: str, function: str, arg: str = ""):
    """``function(arg)`` (or ``function()`` without arg) of config file ``path``; its errors are one line."""
    module = load_module(path)
    if not hasattr(module, function):
        raise ConfigError(f"{path}: defines no {function}(arg=None)")
    try:
        return getattr(module, function)(arg) if arg else getattr(module, function)()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is a user error
        raise ConfigError(f"{path}: {function} failed ({type(e).__name__}: {e})") from None


def resolve(cfg: ConfigDict | dict, overrides: Iterable[str] = (), *, recorded: bool = False) -> ConfigDict:
    """Merge ``cfg`` over :func:`defaults`, apply overrides, validate; returns a locked copy.
    ``recorded``: ``cfg`` is a run's ``config.json`` (keys retired since it was written are dropped)."""
    base = defaults()
    _merge(base, cfg, "", recorded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        set_value(base, key.removeprefix("config."), value)
    validate(base)
    base.lock()
    return base


def loss_mapping(value, what: str = "loss") -> ConfigDict:
    """``loss`` as a ``{name: weight}`` ConfigDict, in order, from a mapping or from ``(name, weight)``
    pairs (config files, overrides and ``config.json`` files written before the mapping): the one
    place where the two forms meet."""
    items = value.items() if hasattr(value, "items") else value
    try:
        pairs = [(n, w) for n, w in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be {{name: weight}} or (name, weight) pairs, got {value!r}") from None
    for n, w in pairs:
        if not isinstance(n, str) or isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"{what} entries must be name: finite weight, got {n!r}: {w!r}")
    if len({n for n, _ in pairs}) != len(pairs):
        raise ConfigError(f"{what} names a piece twice: {[n for n, _ in pairs]}")
    return ConfigDict({n: float(w) for n, w in pairs})


# Keys earlier versions wrote into config.json, and why they are gone. Reading a run's
# recorded config drops them; a new config naming one is an error saying why.
RETIRED = {"model.head": "the classifier is always params/head (the transfer layout, jtl.models.transfer)"}


def _merge(base: ConfigDict, new, prefix: str, recorded: bool = False) -> None:
    for key, value in (new.items() if hasattr(new, "items") else []):
        name = f"{prefix}{key}"
        if name in RETIRED:
            if recorded:
                continue
            raise ConfigError(f"config key {name!r} is retired: {RETIRED[name]}")
        if name == "loss":
            base.loss = loss_mapping(value)  # replaced whole: a file's loss is its complete list
            continue
        if key not in base:
            if prefix.startswith("loss_options."):
                base[key] = value  # options of a loss piece: free-form
                continue
            raise ConfigError(f"unknown config key {name!r}; see jtl.config.defaults() for the keys")
        if isinstance(base[key], ConfigDict) and hasattr(value, "items"):
            _merge(base[key], value, name + ".", recorded)
        else:
            base[key] = _coerce(name, base[key], value)


def set_value(cfg: ConfigDict, dotted: str, text: str) -> None:
    """Set ``cfg.a.b = parse(text)`` for an override ``a.b=text``; ``loss.NAME=W`` sets the
    weight of loss piece NAME (appending the piece if the loss has none of that name)."""
    *parents, leaf = dotted.split(".")
    if parents == ["loss"]:
        cfg.loss = loss_mapping({**cfg.loss, leaf: _parse(text)}, dotted)
        return
    if dotted == "loss":
        cfg.loss = loss_mapping(_parse(text))
        return
    node = cfg
    for i, p in enumerate(parents):
        if p not in node:
            if i > 0 and parents[0] == "loss_options":
                node[p] = ConfigDict()
            else:
                raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r}")
        node = node[p]
    if leaf not in node and not (parents and parents[0] == "loss_options"):
        raise ConfigError(f"unknown config key {dotted!r}; see jtl.config.defaults() for the keys")
    value = _parse(text)
    node[leaf] = _coerce(dotted, node[leaf], value) if leaf in node else value


def _parse(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string


def _coerce(name: str, old: Any, value: Any) -> Any:
    if old is None or isinstance(old, ConfigDict):
        return value
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):  # --config.KEY=false from a shell
            return value.lower() == "true"
        raise ConfigError(f"config key {name!r} must be True or False, got {value!r}")
    if isinstance(old, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(old, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(old, float) and isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value)  # --config.optim.lr=nan: let validate() say what is wrong with it
    if isinstance(old, str) and isinstance(value, str):
        return value
    if isinstance(old, tuple) and isinstance(value, (list, tuple)):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(old, tuple) and isinstance(value, str):
        return (value,)
    raise ConfigError(f"config key {name!r} must be {type(old).__name__}, got {type(value).__name__} {value!r}")


def parse_eval(entries, key: str = "data.eval") -> dict[str, tuple[str, str]]:
    """``data.eval`` (or ``data.test``) as {label: (dataset name, split)}: ``"NAME:SPLIT"`` is labelled
    SPLIT, ``"LABEL=NAME:SPLIT"`` LABEL; e.g. ``("test=fashion_mnist:test", "digits:val")``."""
    out = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigError(f"{key} entry {entry!r} must be NAME:SPLIT or LABEL=NAME:SPLIT")
        label, sep, spec = entry.partition("=")
        if not sep:
            label, spec = "", entry
        name, sep, split = spec.rpartition(":")
        if not sep or not name:
            raise ConfigError(f"{key} entry {entry!r} must be NAME:SPLIT or LABEL=NAME:SPLIT")
        label = label or split
        if label in out:
            raise ConfigError(f"two {key} entries are labelled {label!r}; write LABEL=NAME:SPLIT")
        out[label] = (name, split)
    return out


def validate(c: ConfigDict) -> None:
    """Range checks that types alone do not catch."""
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(c.recipe in ("train", "linear_probe"), f"recipe must be train or linear_probe, got {c.recipe!r}")
    need(0 <= c.seed <= SEED_MAX, f"seed must be an integer in 0..{SEED_MAX}, got {c.seed}")
    need(c.batch_size > 0, f"batch_size must be positive, got {c.batch_size}")
    need(c.eval_batch_size > 0, f"eval_batch_size must be positive, got {c.eval_batch_size}")
    need(c.total_steps > 0, f"total_steps must be positive, got {c.total_steps}")
    need(c.grad_accum_steps >= 1 and c.batch_size % c.grad_accum_steps == 0,
         f"batch_size {c.batch_size} must be a multiple of grad_accum_steps {c.grad_accum_steps}")
    check_optim(c.optim, c.total_steps)
    need(c.data.on_error in ("raise", "skip"), f"data.on_error must be raise or skip, got {c.data.on_error!r}")
    labels = parse_eval(c.data.eval)
    held_out = parse_eval(c.data.test, "data.test")
    need(not set(labels) & set(held_out), f"data.test and data.eval both label a split "
         f"{sorted(set(labels) & set(held_out))}; a split is evaluated during training or held out, not both")
    for key, (val_f, test_f) in (("data", (c.data.val_fraction, c.data.test_fraction)),
                                 ("adapt.target", (c.adapt.target_val_fraction, c.adapt.target_test_fraction))):
        need(0 <= val_f < 1 and 0 <= test_f < 1 and val_f + test_f < 1,
             f"{key} val_fraction={val_f} and test_fraction={test_f} must be in [0, 1) and sum to < 1")
    if c.best_metric:
        label, _, key = c.best_metric.rpartition("/")
        need(label in labels and key in EVAL_KEYS,
             f"best_metric {c.best_metric!r} must be LABEL/KEY with LABEL a data.eval label "
             f"({', '.join(labels) or 'none'}) and KEY one of {', '.join(EVAL_KEYS)}; '' for none")
    need(c.compute_dtype in ("float32", "bfloat16"), f"compute_dtype must be float32 or bfloat16, got {c.compute_dtype!r}")
    need(c.data.normalize in ("imagenet", "inception", "dataset", "none"),
         f"data.normalize must be imagenet, inception, dataset or none, got {c.data.normalize!r}")
    if c.model.init:  # registry weights name their input scaling (imported here: it loads jax)
        importlib.import_module("jtl.weights.registry").check_normalization(c.model.init, c.data.normalize)
    need(c.model.num_classes > 0, f"model.num_classes must be positive, got {c.model.num_classes}")
    need(c.data.image_size > 0, f"data.image_size must be positive, got {c.data.image_size}")
    importlib.import_module("jtl.data.augment").check_config(c.data)  # resize, eval_crop, augment
    for step_key in ("eval_every", "checkpoint_every", "log_every", "keep_checkpoints", "data.limit"):
        node = c
        for k in step_key.split("."):
            node = node[k]
        need(node >= 0, f"{step_key} must be >= 0, got {node}")
    loss_mapping(c.loss)  # names and finite weights
    from jtl.train.adapt_heads import check_switches  # noqa: PLC0415 - the switches' values live with the model

    check_switches(c.adapt)
    for key, regexes in (("freeze", c.freeze), ("optim.groups", [g[1] for g in c.optim.groups]),
                         ("optim.no_decay", c.optim.no_decay)):
        for rx in regexes:
            try:
                re.compile(rx)
            except (re.error, TypeError) as e:
                raise ConfigError(f"{key}: {rx!r} is not a valid regular expression ({e})") from None
