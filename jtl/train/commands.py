"""``jtl train | eval | predict``: the command-line face of the trainer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from jtl.errors import JtlError

CHECKPOINTS = ("latest", "best", "swad")
CHECKPOINT_HELP = "latest, best (by best_metric) or swad (a dg.swad run's averaged model)"


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train or resume a run", description="train --config FILE[:ARG] --workdir DIR "
                       "[--config.KEY=VALUE ...]")
    p.add_argument("--config", required=True, help="config file, e.g. configs/finetune.py:scratch")
    p.add_argument("--workdir", help="the run's directory (required unless --print-config)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_distributed(p)
    p.set_defaults(handler=cmd_train, accepts_overrides=True)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on a split")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", required=True, help="a data.eval or data.test label of the run (a DG run's "
                   "val_NAME / test_NAME), or NAME:SPLIT")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="latest", help=CHECKPOINT_HELP)
    from jtl.tta.command import add_arguments as add_adapt_arguments  # noqa: PLC0415

    add_adapt_arguments(p)  # --adapt tent|eata|sar and its options (docs/test-time.md)
    _add_distributed(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of image files with a finished run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="latest", help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+")
    p.set_defaults(handler=cmd_predict)


def _add_distributed(p) -> None:
    g = p.add_argument_group("multi-process runs (default: the JTL_COORDINATOR, JTL_NUM_PROCESSES, "
                             "JTL_PROCESS_ID environment variables; JTL_DISTRIBUTED=auto for TPU pods/SLURM)")
    g.add_argument("--coordinator", help="HOST:PORT of process 0, where it listens")
    g.add_argument("--num-processes", type=int, help="number of processes of the run")
    g.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1")


def cmd_train(args) -> int:
    from jtl.distributed import initialize_from_env, is_writer  # noqa: PLC0415

    from jtl.config import load_config  # noqa: PLC0415

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(json.loads(cfg.to_json_best_effort()), indent=2, sort_keys=True))  # as config.json
        return 0
    if not args.workdir:
        raise JtlError("jtl train needs --workdir DIR (the run's directory)")
    initialize_from_env(args.coordinator, args.num_processes, args.process_id)  # before anything touches JAX
    from jtl.train.loop import train  # noqa: PLC0415

    summary = train(cfg, args.workdir)
    if not is_writer():
        return 0
    for label, m in summary["final"].items():
        print(f"{label}: top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    print(f"wrote {Path(args.workdir).absolute()}")
    return 0


def _eval_source(run, spec: str):
    """The dataset of ``--split``: a ``data.eval`` or ``data.test`` label of the run (a DG run's
    ``val_NAME`` / ``test_NAME``: :func:`jtl.dg.task.eval_splits`), or NAME:SPLIT."""
    from jtl.train.tasks import load_source, parse_eval  # noqa: PLC0415

    dg_labels = {}
    if run.cfg.dg.domains:  # a domain-generalization run: its splits exactly as it evaluated them
        from jtl.dg.task import eval_source, eval_splits  # noqa: PLC0415

        dg_labels = eval_splits(run.cfg)
        if spec in dg_labels:
            return eval_source(run.cfg, *dg_labels[spec])
    labels = {**parse_eval(run.cfg.data.eval), **parse_eval(run.cfg.data.test, "data.test")}
    if spec in labels:
        name, split = labels[spec]
    else:
        name, sep, split = spec.rpartition(":")
        if not sep or not name:
            raise JtlError(f"--split {spec!r} is neither a data.eval/data.test label "
                           f"({', '.join([*labels, *dg_labels])}) nor NAME:SPLIT")
    return load_source(run.cfg, name, split, budget=False, classes=run.classes)


def cmd_eval(args) -> int:
    from jtl.distributed import initialize_from_env, is_writer  # noqa: PLC0415
    from jtl.tta.command import run_adapt, settings  # noqa: PLC0415

    adapt = settings(args)  # test-time adaptation options, checked before anything is read
    initialize_from_env(args.coordinator, args.num_processes, args.process_id)
    from jtl.train import runinfo  # noqa: PLC0415
    from jtl.train.inference import RunModel  # noqa: PLC0415

    run = RunModel(args.workdir, args.checkpoint)
    source = _eval_source(run, args.split)
    result = run_adapt(run, source, adapt) if adapt else run.evaluate(source)
    safe = args.split.replace("/", "_").replace(":", "_") + (f"_{adapt['adapt']}" if adapt else "")
    safe += "_swad" if args.checkpoint == "swad" else ""  # not to overwrite the last iterate's result
    path = run.workdir / f"eval_{safe}_step{run.step}.json"
    try:
        runinfo.write_json(path, {"step": run.step, "checkpoint": args.checkpoint, **result})
    except OSError as e:  # a read-only run directory: the result is still printed
        print(f"jtl: note: {path.name} not written ({e.strerror}); the result is below", file=sys.stderr)
    if is_writer():
        keys = ("top1", "top5", "macro_precision", "macro_recall", "macro_f1", "count")
        per_class = {name: round(acc, 4) for name, acc, n in
                     zip(run.classes.names, result["per_class_accuracy"], result["class_support"]) if n}
        print(json.dumps({"split": args.split, "step": run.step, "checkpoint": args.checkpoint,
                          **{k: result[k] for k in keys}, "per_class_accuracy": per_class,
                          **({"adapt": result["adapt"]} if adapt else {})}))
    return 0


def load_images(paths, norm: dict) -> np.ndarray:
    """Image files exactly as the eval pipeline sees an image folder's: decoded to RGB
    (:mod:`jtl.data.decode`), resized (and centre-cropped) by :func:`jtl.data.augment.geometric`
    as the run's recorded ``norm`` says, converted to the run's channels; uint8 (N, S, S, C)."""
    from jtl.data import augment  # noqa: PLC0415
    from jtl.data.decode import decode_image  # noqa: PLC0415
    from jtl.errors import DataError  # noqa: PLC0415

    images = []
    for p in paths:
        if not Path(p).is_file():
            raise JtlError(f"image not found: {p}")
        try:
            images.append(decode_image(p, channels=3))
        except DataError as e:
            raise JtlError(str(e)) from None
    g = augment.geometry(norm)
    x = augment.geometric(images, g["image_size"], augment.EVAL_CROPS[g["eval_crop"]], None, g["resize"])
    x = augment.to_channels(x, norm["channels"])
    return x if x.dtype == np.uint8 else np.round(x).astype(np.uint8)


def cmd_predict(args) -> int:
    from jtl.train.inference import RunModel  # noqa: PLC0415

    if args.top_k < 1:
        raise JtlError(f"--top-k must be at least 1, got {args.top_k}")
    run = RunModel(args.workdir, args.checkpoint)
    norm = run.normalization
    x = load_images(args.images, norm)
    logits = run.logits(x).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    names = run.classes.names
    k = min(args.top_k, probs.shape[-1])
    for path, p in zip(args.images, probs):
        top = np.argsort(-p, kind="stable")[:k]
        shown = ", ".join(f"{names[i] if i < len(names) else i} {p[i]:.3f}" for i in top)
        print(f"{path}: {shown}")
    return 0
