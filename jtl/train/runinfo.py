"""Workdir bookkeeping: the resolved config, versions and devices, atomic JSON writes.

In a multi-process run every process checks the workdir, and process 0 alone writes
(:func:`write_json` does nothing on the others).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from jtl.distributed import is_writer
from jtl.config import defaults, loss_mapping
from jtl.errors import ConfigError, JtlError
from jtl.fileio import atomic_open

CONFIG_FILE = "config.json"
# Keys that may change between a run and its resumption without changing the results.
RESUMABLE_KEYS = ("progress", "total_steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically: a temporary file in the same directory, then rename (process 0 only)."""
    if not is_writer():
        return
    with atomic_open(path, make_parents=False) as f:  # readable as the umask allows, not mkstemp's 0600
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def with_defaults(old: dict) -> dict:
    """A config.json of an earlier jtl in today's form: keys added since get their defaults, and
    ``loss`` pairs become the ``{name: weight}`` mapping."""
    def fill(d: dict, base: dict) -> dict:
        out = dict(d)
        for k, v in base.items():
            if k not in out:
                out[k] = v
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = fill(out[k], v)
        return out

    out = fill(old, json.loads(defaults().to_json_best_effort()))
    if "loss" in old:  # a run's loss is its complete list, never merged with the default {"ce": 1.0}
        out["loss"] = old["loss"]
    if isinstance(out.get("loss"), list):  # (name, weight) pairs, as configs were written before the mapping
        try:
            out["loss"] = loss_mapping(out["loss"]).to_dict()
        except ConfigError:
            pass  # a damaged entry: the comparison then reports that loss differs
    return out


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in RESUMABLE_KEYS}


def prepare_workdir(workdir: Path, cfg) -> None:
    """Create ``workdir``; refuse one that holds a run of another config; record config and versions."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test.")
        probe.close()
    except OSError as e:
        raise JtlError(f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir") from None
    new = json.loads(cfg.to_json_best_effort())
    path = workdir / CONFIG_FILE
    # Only a run that got as far as logging or checkpointing is protected: a start that failed
    # (a typo in a dataset name, say) must not lock its workdir to the mistaken config.
    if path.exists() and has_started(workdir):
        refuse_earlier_layout(workdir)
        old = with_defaults(read_config_json(path))
        if _comparable(old) != _comparable(new):
            diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_KEYS and old.get(k) != new.get(k))
            raise JtlError(
                f"workdir {workdir} holds a run of another config (differs in {', '.join(diff)}); "
                "use a fresh --workdir or the same config"
            )
    write_json(path, new)
    write_json(workdir / "run_info.json", run_info())


def refuse_earlier_layout(workdir: Path) -> None:
    """A run written before the transfer layout (run.json without ``"layout": "transfer"``)
    is not resumed: its optimizer state has the old structure (:mod:`jtl.train.layout`)."""
    try:
        layout = json.loads((workdir / "run.json").read_text()).get("layout")
    except (OSError, ValueError, AttributeError):
        layout = None
    if layout != "transfer":
        raise JtlError(f"workdir {workdir} holds a run written before jtl's transfer layout (params/backbone, "
                       f"params/head); it evaluates, predicts and seeds new runs (model.init={workdir}) but is not "
                       "resumed: use a fresh --workdir")


def has_started(workdir: str | os.PathLike) -> bool:
    """Whether a run got as far as logging or checkpointing in ``workdir`` (its facts are then fixed)."""
    workdir = Path(workdir)
    return (workdir / "metrics.jsonl").exists() or any((workdir / "checkpoints").glob("[0-9]*"))


def read_config_json(path: Path) -> dict:
    """A workdir's ``config.json``; a damaged one is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JtlError(f"{path} is unreadable ({type(e).__name__}: {e}); restore it from a copy, "
                       "or use a fresh --workdir") from None


def run_info() -> dict:
    """Versions of the numerical stack, the devices and the git commit of jtl."""
    import jax  # noqa: PLC0415

    versions = {}
    for mod in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "grain", "tensorflow_datasets"):
        try:
            versions[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except (ImportError, AttributeError):
            versions[mod] = None
    from jtl import __version__  # noqa: PLC0415

    versions["jtl"] = __version__
    return {
        "versions": versions,
        "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


FAILED_FILE = "failed.json"


def record_failure(workdir: str | os.PathLike, error: BaseException) -> None:
    """Write ``failed.json`` (the one-line error and the traceback) into a run's workdir."""
    import traceback  # noqa: PLC0415

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    line = str(error).splitlines()[0] if str(error) else type(error).__name__
    write_json(workdir / FAILED_FILE, {
        "error": f"{type(error).__name__}: {line}",
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    })


def read_failure(workdir: str | os.PathLike) -> str:
    """The one-line error of a failed run ('' if it has none)."""
    try:
        return json.loads((Path(workdir) / FAILED_FILE).read_text()).get("error", "")
    except (OSError, ValueError):
        return ""
