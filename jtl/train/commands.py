"""``jtl train | eval | predict``: the command-line face of the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jtl.errors import JtlError


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train or resume a run", description="train --config FILE[:ARG] --workdir DIR "
                       "[--config.KEY=VALUE ...]")
    p.add_argument("--config", required=True, help="config file, e.g. configs/finetune.py:scratch")
    p.add_argument("--workdir", required=True)
    _add_distributed(p)
    p.set_defaults(handler=cmd_train, accepts_overrides=True)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on a split")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", required=True, help="a data.eval label of the run, or NAME:SPLIT")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    _add_distributed(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of image files with a finished run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
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

    initialize_from_env(args.coordinator, args.num_processes, args.process_id)  # before anything touches JAX
    from jtl.config import load_config  # noqa: PLC0415
    from jtl.train.loop import train  # noqa: PLC0415

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, args.workdir)
    if not is_writer():
        return 0
    for label, m in summary["final"].items():
        print(f"{label}: top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    print(f"wrote {Path(args.workdir).absolute()}")
    return 0


def _run_config(workdir: str):
    from jtl.config import resolve  # noqa: PLC0415

    path = Path(workdir) / "config.json"
    if not path.exists():
        raise JtlError(f"{workdir} is not a jtl run directory (no config.json)")
    from jtl.train.runinfo import read_config_json  # noqa: PLC0415

    return resolve(read_config_json(path))


def _trainer(workdir: str):
    from jtl.train.loop import Trainer  # noqa: PLC0415

    return Trainer(_run_config(workdir), workdir)


def _restored(trainer, which: str):
    step = trainer.ckpt.best_step() if which == "best" else None
    state, _, step = trainer.restore(step)
    if step is None:
        raise JtlError(f"{trainer.workdir} has no checkpoint yet; train first")
    return state, step


def cmd_eval(args) -> int:
    from jtl.distributed import initialize_from_env, is_writer  # noqa: PLC0415

    initialize_from_env(args.coordinator, args.num_processes, args.process_id)
    from jtl.train import runinfo  # noqa: PLC0415
    from jtl.train.tasks import load_source  # noqa: PLC0415

    trainer = _trainer(args.workdir)
    state, step = _restored(trainer, args.checkpoint)
    splits = trainer.task.eval_iterators
    if args.split in splits:
        chosen = {args.split: splits[args.split]}
    else:
        name, sep, split = args.split.rpartition(":")
        if not sep:
            raise JtlError(f"--split {args.split!r} is neither a data.eval label ({', '.join(splits)}) nor NAME:SPLIT")
        import jax  # noqa: PLC0415

        from jtl import data as jdata  # noqa: PLC0415

        cfg, norm = trainer.cfg, trainer.task.normalization
        src = load_source(cfg, name, split, budget=False)
        chosen = {args.split: lambda: jdata.make_iterator(
            src, batch_size=cfg.eval_batch_size // jax.process_count(), seed=cfg.seed, train=False,
            normalize=(norm["mean"], norm["std"]), image_size=norm["image_size"], channels=norm["channels"],
            process_index=jax.process_index(), process_count=jax.process_count(), output="uint8")}
    result = trainer.evaluate(state, chosen)[args.split]
    safe = args.split.replace("/", "_").replace(":", "_")
    runinfo.write_json(trainer.workdir / f"eval_{safe}_step{step}.json", {"step": step, **result})
    if is_writer():
        keys = ("top1", "top5", "macro_precision", "macro_recall", "macro_f1", "count")
        print(json.dumps({"split": args.split, "step": step, **{k: result[k] for k in keys}}))
    return 0


def load_images(paths, image_size: int, channels: int, mean, std) -> np.ndarray:
    """Read image files as the eval pipeline sees them: resized, channel-matched, normalised."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
                x = np.asarray(im, np.float32) / 255.0
        except FileNotFoundError:
            raise JtlError(f"image not found: {p}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise JtlError(f"{p}: not a readable image ({type(e).__name__})") from None
        x = x[..., None] if x.ndim == 2 else x
        out.append((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return np.stack(out)


def cmd_predict(args) -> int:
    import jax  # noqa: PLC0415

    from jtl import data as jdata  # noqa: PLC0415

    trainer = _trainer(args.workdir)
    state, _ = _restored(trainer, args.checkpoint)
    norm = trainer.task.normalization
    x = load_images(args.images, norm["image_size"], norm["channels"], norm["mean"], norm["std"])
    out, _ = trainer.task.forward(jax.device_get(state.variables), {"image": x}, False)
    probs = np.asarray(jax.nn.softmax(out["logits"].astype(np.float32), -1))
    try:
        names = list(jdata.info(trainer.cfg.data.train).class_names)
    except Exception:  # noqa: BLE001 - names are a nicety; indices always work
        names = []
    if trainer.cfg.data.classes and names:
        names = [names[c] for c in trainer.cfg.data.classes]
    k = min(args.top_k, probs.shape[-1])
    for path, p in zip(args.images, probs):
        top = np.argsort(-p)[:k]
        shown = ", ".join(f"{names[i] if i < len(names) else i} {p[i]:.3f}" for i in top)
        print(f"{path}: {shown}")
    return 0
