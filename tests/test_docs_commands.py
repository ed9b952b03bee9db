"""Every command documented in README.md and docs/*.md runs as written (in a short form).

What is covered. Command lines are found automatically in the *unlabelled* fenced code
blocks (```` ``` ```` without a language; ```` ```python ```` blocks are library code,
not commands) of README.md and docs/*.md. A backslash continues a line, ``# ...``
after a blank is a comment, leading ``VAR=value`` words are the command's
environment. Three kinds of line are commands; any other line (``export ...``, a
grammar such as ``NAME := ...``) is not:

- ``jtl ...``: RUN, in-process through :func:`jtl.cli.main` (one JAX import for all),
  and must exit 0; all failures are reported together. Unless it is in
  :data:`EXCEPTIONS` (not run, with the reason) or :data:`OFFLINE_VARIANTS` (runs in
  an offline variant, with the reason); a ``jtl`` line that neither runs nor is
  excepted fails the test.
- ``make TARGET``: the target must exist in the Makefile (not run: ``make test`` is
  this suite, ``make demo`` trains 14 runs for about 8 minutes).
- ``[.venv/bin/]python[3] scripts/X.py ...``: the script must exist and every
  ``--option`` of the line must appear in its source (not run: benchmarks and
  studies that take minutes to hours).

Short form. Each documented file runs in its own temporary directory (the cwd),
its commands in document order, with ``configs`` linked to the repository's and:

- ``jtl train`` / ``jtl sweep`` / ``jtl da-results`` get :data:`SHORT` appended (2 steps, no warm-up,
  no intermediate eval/checkpoint, no progress bar); a sweep applies them to every
  member (``jtl sweep`` takes ``--config.KEY=VALUE`` like ``jtl train``). The batch
  size is NOT shrunk: a documented ``data.limit`` smaller than the batch must fail
  here as it would for the reader;
- ``--config ...`` means the ``--config`` of the file's previous command;
  ``[--opt value]`` (an optional part) is run with the option;
- what a command reads but the page does not make is prepared first: a run it
  starts from or evaluates (``--config.model.init=DIR``, ``ARG,init=DIR``,
  ``eval/predict --workdir DIR``, ``collect DIR``) is made by the documented
  command whose ``--workdir`` is DIR (from any page; copied if already made), else
  from :data:`STAND_INS`; image files for ``jtl predict``; a randomly initialised
  torchvision state dict for ``jtl port --src FILE.pth``; a tiny image folder
  (3 classes x 16 PNGs of 8x8) for ``folder:PATH`` and ``configs/folder.py:PATH``
  (an absolute PATH is made inside the temporary directory, and the command
  rewritten to it);
- docs/adding-a-loss.md's loss is registered by executing the page's own code
  blocks (the ``# jtl/losses/balance.py`` module and the ``@register`` block).

Data: prepared once per pytest session under ``<basetemp>/data`` (``JTL_DATA_DIR``,
as tests/test_recipes.py, test_sweep.py, ... share it). Compiled programs: the
persistent compilation cache the rest of the suite uses (``$JTL_COMPILATION_CACHE``,
default ``~/.cache/jtl/xla``); ``JTL_CACHE`` (weights, ...) is a temporary directory.

Time (2-core CPU): the default test runs README.md's commands but those in
:data:`SLOW`; the test marked slow runs SLOW and every command of docs/*.md. Each
prints its commands' times (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
SYSTEM_PYTHON = "/usr/bin/python3"

# Appended to every documented `jtl train` and `jtl sweep` command.
SHORT = ["--config.total_steps=2", "--config.optim.warmup_steps=0", "--config.eval_every=0",
         "--config.checkpoint_every=0", "--config.progress=False"]

# Documented commands that cannot run here, exactly as documented (continuations joined,
# comment dropped), with the reason. An entry no page documents any more fails the test.
_MULTI_HOST = "one process of a two-process run (needs both at once; tests/test_multihost.py runs that)"
# docs/adaptation.md, "Benchmarks: TLlib's tables": benchmark -> its collect options
_BENCHMARKS = {b: "--group-by loss,data.train,adapt.target"
               for b in ("office31", "office_home", "domainnet", "digits_tllib")}
_BENCHMARKS["visda2017"] = "--metric target_test/macro_recall --group-by loss"
_BENCHMARK = ("a whole TLlib table on the real benchmark and ImageNet weights (not reachable here; "
              "tests/test_benchmark_configs.py runs office31.py and digits_tllib.py on miniature fakes)")
EXCEPTIONS = {
    "jtl port --src resnet50.tv_in1k --out ckpt/resnet50_tv":
        "fetches ImageNet weights from download.pytorch.org (no network here; tests/test_weights.py "
        "covers fetching, checksums and the offline error)",
    **{f"jtl sweep --config configs/{b}.py:table --workdir runs/{b}": _BENCHMARK for b in _BENCHMARKS},
    **{f"jtl collect runs/{b} {how} --select none --out {b}.md": _BENCHMARK for b, how in _BENCHMARKS.items()},
    **{c: "a whole table on CIFAR-10/STL-10 or PACS (not reachable here; tests/test_cifar_stl_pacs_configs.py "
          "runs cifar_stl.py and pacs.py on miniature fakes)"
       for c in ("jtl sweep --config configs/cifar_stl.py:table --workdir runs/cifar_stl",
                 "jtl collect runs/cifar_stl --group-by loss,data.train,adapt.target --select none --out cifar_stl.md",
                 "jtl sweep --config configs/pacs.py:table --workdir runs/pacs", "jtl collect --domainbed runs/pacs")},
    "JTL_COORDINATOR=host0:1234 JTL_NUM_PROCESSES=2 JTL_PROCESS_ID=0 jtl train ...":
        "a template ('jtl train ...') of " + _MULTI_HOST,
    "JTL_COORDINATOR=127.0.0.1:12355 JTL_NUM_PROCESSES=2 JTL_PROCESS_ID=0 "
    "jtl train --config configs/finetune.py:scratch --workdir runs/mh &": _MULTI_HOST,
    "JTL_COORDINATOR=127.0.0.1:12355 JTL_NUM_PROCESSES=2 JTL_PROCESS_ID=1 "
    "jtl train --config configs/finetune.py:scratch --workdir runs/mh": _MULTI_HOST,
}

# Documented commands that run here only in an offline variant: documented -> (what runs instead, why).
OFFLINE_VARIANTS = {
    "jtl train --config configs/folder.py:/data/pets --workdir runs/pets": (
        "jtl train --config configs/folder.py:/data/pets,scratch --workdir runs/pets",
        "its default recipe fetches ImageNet ResNet-18 weights (no network here); the page's own "
        "no-download variant PATH,scratch makes the run that the next commands read"),
}

# README.md commands left to the slow test (the default test runs the rest of README.md), with the
# reason. Measured cold (empty compilation cache) on the 2-core CPU.
SLOW = {
    "jtl sweep --config configs/ablate_da.py:tradeoff,dann --workdir runs/tradeoff":
        "compiles one 15-member vectorized DANN program and writes 15 runs: about 3 min",
    "jtl collect runs/tradeoff --metric target_test/top1 --plot loss.dann --out table.md": "reads that sweep",
    "jtl train --config configs/da_fmnist_mnistm.py:source_only --workdir runs/mnistm/source_only":
        "adaptation on 28 px MNIST-M-style data: with the next, about 2.5 min (docs/adaptation.md's are the same)",
    "jtl train --config configs/da_fmnist_mnistm.py:cdan,init=runs/mnistm/source_only --workdir runs/mnistm/cdan":
        "the CDAN program (with the previous, about 2.5 min)",
    "jtl train --config configs/da_folder.py:source_only,source=/data/photos,target=/data/sketches "
    "--workdir runs/own1/source_only": "your own domains: with the next two, two adaptation programs (about 2 min)",
    "jtl train --config configs/da_folder.py:dann,source=/data/photos,target=/data/sketches,"
    "init=runs/own1/source_only --workdir runs/own1/dann": "the DANN program of your own domains",
    "jtl eval --workdir runs/own1/dann --split target_test": "reads that DANN run",
    "jtl da-results --config configs/da_folder.py:source=/data/photos,target=/data/sketches --methods "
    "source_only,dann,mcc --seeds 0,1 --workdir runs/own --out runs/own/results.md":
        "4 vectorized programs (source_only, dann, mcc, the dann_weight0 control) of 2 seeds and 8 final "
        "evaluations: 3-10 min (tests/test_own_domains.py runs the same study, slow too)",
}

# Directories that commands read but no documented command makes: built from a run that one does.
# name -> (documented workdir to copy, config edits per copy: {subdir: {dotted key: value}})
STAND_INS = {
    "runs/sweep_lr": ("runs/tradeoff", {"": {}}),
    "runs/extra": ("runs/tradeoff", {"": {}}),
    # `--plot optim.lr` needs runs that differ in optim.lr: two copies of the sweep, one relabelled.
    "runs/da": ("runs/tradeoff", {"lr0.01": {}, "lr0.03": {"optim.lr": 0.03}}),
}

_COMMAND_WORDS = ("jtl", "make", "python", "python3", ".venv/bin/python", ".venv/bin/python3")
_ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")
_IMAGE = re.compile(r"\.(png|jpe?g|bmp|gif|webp)$", re.I)


# ----------------------------------------------------------------------------------------------
# Finding the commands


@dataclass
class Command:
    page: str
    line: int  # 1-based line of the page where the command starts
    text: str  # as documented: continuations joined, comment dropped, blanks collapsed
    env: dict = field(default_factory=dict)
    words: list = field(default_factory=list)  # after the environment words

    @property
    def kind(self) -> str:
        w = self.words[0]
        if w == "jtl":
            return "jtl"
        if w == "make":
            return "make"
        return "script"

    def __str__(self):
        return f"{self.page}:{self.line}: {self.text}"


def _strip_comment(line: str) -> str:
    """Drop a shell comment: an unquoted '#' at the start of a word (not the '#1' of 'digits:x#1')."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _optional_parts(text: str) -> str:
    """``[--split train]`` (an optional part, as in a usage line) -> ``--split train``."""
    return re.sub(r"(?<!\S)\[(-[^\]]*)\]", r"\1", text)


def page_commands(page: str) -> list[Command]:
    """The command lines of one page, in order (see the module docstring for what counts)."""
    lines = (ROOT / page).read_text().splitlines()
    out, in_block, lang, pending, start = [], False, "", "", 0
    for n, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block, lang, pending = (not in_block), stripped[3:].strip().lower(), ""
            continue
        if not in_block or lang not in ("", "sh", "bash", "shell", "console"):
            continue
        if not pending:
            start = n
        line = _strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = " ".join((pending + line).split())
        pending = ""
        text = text.removeprefix("$ ")
        if not text:
            continue
        words = shlex.split(text)
        env = {}
        while words and _ENV_WORD.match(words[0]):
            k, _, v = words.pop(0).partition("=")
            env[k] = v
        if not words or words[0] not in _COMMAND_WORDS:
            continue
        if words[0].startswith(("python", ".venv")) and not (len(words) > 1 and words[1].startswith("scripts/")):
            continue
        out.append(Command(page, start, text, env, words))
    return out


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in page_commands(page)]


# ----------------------------------------------------------------------------------------------
# Static checks (make targets, scripts) and the coverage rule


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


def _check_static(cmd: Command) -> str | None:
    """Why a make/script command is wrong, or None."""
    if cmd.kind == "make":
        missing = [t for t in cmd.words[1:] if not t.startswith("-") and t not in _make_targets()]
        return f"no Makefile target {missing}" if missing else None
    script = ROOT / cmd.words[1]
    if not script.is_file():
        return f"{cmd.words[1]} does not exist"
    source = script.read_text()
    words = shlex.split(_optional_parts(cmd.text))
    opts = {w.split("=", 1)[0] for w in words if w.startswith("--")}
    unknown = sorted(o for o in opts if f'"{o}"' not in source and f"'{o}'" not in source)
    return f"{cmd.words[1]} has no option {', '.join(unknown)}" if unknown else None


def test_every_documented_command_is_covered():
    """Fast: each command is runnable or excepted; make targets and script options exist."""
    cmds = all_commands()
    assert any(c.kind == "jtl" for c in cmds), "found no documented jtl command: is the extraction broken?"
    problems = []
    for c in cmds:
        if c.kind == "jtl":
            if c.text in EXCEPTIONS:
                continue
            if "..." in c.words[1:] and "--config" not in c.words:
                problems.append(f"{c}: a template ('...'); make it a real command or add it to EXCEPTIONS")
            elif c.env or c.words[-1] == "&":
                problems.append(f"{c}: needs an environment or a background process; add it to EXCEPTIONS")
        elif (why := _check_static(c)) is not None:
            problems.append(f"{c}: {why}")
    documented = {c.text for c in cmds}
    for table, name in ((EXCEPTIONS, "EXCEPTIONS"), (OFFLINE_VARIANTS, "OFFLINE_VARIANTS"), (SLOW, "SLOW")):
        problems += [f"{name} entry no page documents any more (remove it): {t!r}"
                     for t in table if t not in documented]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# Running the jtl commands


class Runner:
    """Runs documented commands in a per-page workspace, preparing what they read."""

    def __init__(self, base: Path):
        self.base = base
        self.made: dict[str, Path] = {}  # documented workdir -> a finished copy of it (any workspace)
        self.producers = {}  # documented workdir -> the documented jtl train/sweep command that makes it
        for c in all_commands():
            if c.kind == "jtl" and c.text not in EXCEPTIONS and c.words[1] in ("train", "sweep"):
                wd = _option(shlex.split(_runnable_text(c)), "--workdir")
                if wd and wd not in self.producers:
                    self.producers[wd] = c
        self.times: list[tuple[str, float]] = []
        self.skipped: list[str] = []

    def workspace(self, page: str) -> Path:
        ws = self.base / page.replace("/", "_")
        if not ws.exists():
            ws.mkdir(parents=True)
            (ws / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
        return ws

    # -- preparing inputs

    def need_run(self, ws: Path, path: str, stack=()):
        """Make sure run/sweep directory ``path`` exists in ``ws`` (a documented one, or a stand-in)."""
        if os.path.isabs(path) or (ws / path).exists():
            return
        if path in self.made:
            shutil.copytree(self.made[path], ws / path, symlinks=True)
        elif path in self.producers and path not in stack:
            self.run(ws, self.producers[path], stack + (path,))
        elif path in STAND_INS:
            src, copies = STAND_INS[path]
            self.need_run(ws, src, stack + (path,))
            for sub, edits in copies.items():
                dst = ws / path / sub
                shutil.copytree(ws / src, dst, symlinks=True)
                for cfg in dst.rglob("config.json"):
                    data = json.loads(cfg.read_text())
                    for dotted, value in edits.items():
                        node = data
                        *parents, leaf = dotted.split(".")
                        for p in parents:
                            node = node[p]
                        node[leaf] = value
                    cfg.write_text(json.dumps(data))
        else:
            raise AssertionError(f"reads {path}, which no documented jtl train/sweep makes and STAND_INS lacks")

    def prepare(self, ws: Path, cmd: Command, argv: list[str], stack=()) -> list[str]:
        """Make what ``argv`` reads; returns argv with absolute image-folder paths moved into ``ws``."""
        sub = argv[0]
        argv = [_FOLDER.sub(lambda m: m.group(1) + _image_folder(ws, m.group(2)), w) for w in argv]
        argv = [_DA_FOLDER.sub(lambda m: m.group(1) + _image_folder(ws, m.group(2)), w)
                if "configs/da_folder.py:" in w else w for w in argv]
        for w in argv:
            for m in re.finditer(r"(?:^--config\.model\.init=|[:,]init=)([^,\s]+)", w):
                self.need_run(ws, m.group(1), stack)
        if sub in ("eval", "predict"):
            self.need_run(ws, _option(argv, "--workdir"), stack)
        if sub == "predict":
            for w in _positionals(argv, {"--workdir", "--top-k", "--checkpoint"}):
                if _IMAGE.search(w) and not (ws / w).exists():
                    _image(ws / w)
        if sub == "collect":
            for w in _positionals(argv, {"--metric", "--group-by", "--seed-key", "--select", "--source-label",
                                             "--format", "--out", "--plot", "--plot-out"}):
                self.need_run(ws, w, stack)
        if sub == "port":
            src = _option(argv, "--src")
            if src and src.endswith(".pth") and not (ws / src).exists():
                _torchvision_state_dict(ws / src, _option(argv, "--arch"))
        return argv

    # -- running

    def argv(self, cmd: Command, previous_config: str | None) -> list[str]:
        argv = shlex.split(_optional_parts(_runnable_text(cmd)))
        while argv and _ENV_WORD.match(argv[0]):
            argv.pop(0)
        argv = argv[1:]  # drop "jtl"
        if "--config" in argv and argv[argv.index("--config") + 1] == "...":
            assert previous_config, f"{cmd}: '--config ...' but no earlier command of the page has a --config"
            argv[argv.index("--config") + 1] = previous_config
        if argv and argv[0] in ("train", "sweep", "da-results"):
            argv += SHORT
        return argv

    def run(self, ws: Path, cmd: Command, stack=(), previous_config=None) -> list[str]:
        """Run one documented jtl command in ``ws``; returns its argv. Raises AssertionError on failure."""
        from jtl import cli

        argv = self.prepare(ws, cmd, self.argv(cmd, previous_config), stack)
        out, err = io.StringIO(), io.StringIO()
        t = time.perf_counter()
        cwd = os.getcwd()
        os.chdir(ws)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = cli.main(argv)
                except SystemExit as e:  # argparse errors
                    rc = e.code if isinstance(e.code, int) else 2
                except Exception as e:  # noqa: BLE001 - reported with the command
                    rc, err = 1, io.StringIO(f"{type(e).__name__}: {e}")
        finally:
            os.chdir(cwd)
        dt = time.perf_counter() - t
        self.times.append((f"{cmd.page}:{cmd.line} jtl {' '.join(argv[:2])}", dt))
        print(f"{dt:6.1f} s  exit {rc}  {cmd.page}:{cmd.line} jtl {shlex.join(argv)}", file=sys.__stdout__, flush=True)
        if rc != 0:
            tail = "\n      ".join((err.getvalue().strip() or out.getvalue().strip()).splitlines()[-6:])
            raise AssertionError(f"exit {rc} ({dt:.0f} s) running `jtl {shlex.join(argv)}` in {ws}:\n      {tail}")
        if argv[0] in ("train", "sweep"):
            wd = _option(argv, "--workdir")
            self.made.setdefault(wd, ws / wd)
        return argv

    def run_page(self, page: str, which=lambda cmd: True) -> list[str]:
        """Run a page's jtl commands (those ``which`` picks) in order; returns the failures (all of them)."""
        ws = self.workspace(page)
        failures, previous_config = [], None
        for cmd in page_commands(page):
            if cmd.kind != "jtl" or cmd.text in EXCEPTIONS:
                continue
            config = _option(shlex.split(_runnable_text(cmd)), "--config")
            previous_config = config if config and config != "..." else previous_config
            if not which(cmd):
                continue
            try:
                self.run(ws, cmd, previous_config=previous_config)
            except _Skip as e:
                self.skipped.append(f"{cmd}: {e}")
            except AssertionError as e:
                failures.append(f"{cmd}\n    {e}")
        return failures


class _Skip(Exception):
    pass


def _runnable_text(cmd: Command) -> str:
    return OFFLINE_VARIANTS[cmd.text][0] if cmd.text in OFFLINE_VARIANTS else cmd.text


def _option(argv: list[str], name: str) -> str | None:
    for i, w in enumerate(argv):
        if w == name and i + 1 < len(argv):
            return argv[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def _positionals(words: list[str], valued: set[str]) -> list[str]:
    out, skip = [], False
    for i, w in enumerate(words):
        if skip:
            skip = False
        elif w in valued:
            skip = True
        elif not w.startswith("-") and i > 0:  # words[0] is the sub-command
            out.append(w)
    return out


def _image(path: Path, size: int = 28, seed: int = 0):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


# folder:PATH (a dataset name) and configs/folder.py:PATH[,RECIPE] (the folder quick start's config)
_FOLDER = re.compile(r"((?:^|(?<=[=\s]))folder:|^(?:\S*/)?configs/folder\.py:)([^,:\s]+)")
# configs/da_folder.py:...,source=PATH,target=PATH (README, "Your own domains")
_DA_FOLDER = re.compile(r"((?<=[:,])(?:source|target)=)([^,:\s]+)")
# Documented folders that are split folders PATH/{train,test}/<class>/ (the own-domains target)
SPLIT_FOLDERS = {"/data/sketches"}


def _image_folder(ws: Path, path: str, classes: int = 3, per_class: int = 16) -> str:
    """Make ``path/<class>/*.png`` (a tiny labelled folder of 8x8 images, the class in the brightness)
    unless it exists (a :data:`SPLIT_FOLDERS` path: ``path/train/`` and ``path/test/``, each such a
    folder); an absolute ``path`` is made inside ``ws``. Returns the path to use."""
    import numpy as np
    from PIL import Image

    root = ws / path.lstrip("/")
    if path in SPLIT_FOLDERS and not root.exists():
        _image_folder(ws, f"{path}/train", classes, per_class)
        _image_folder(ws, f"{path}/test", classes, per_class // 2)
    if not root.exists():
        rng = np.random.default_rng(0)
        for c in range(classes):
            (root / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                x = np.clip(rng.normal(40 + 80 * c, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(x).save(root / f"class{c}" / f"{i:02d}.png")
    return str(root) if os.path.isabs(path) else path


def _torchvision_state_dict(path: Path, arch: str | None):
    """A randomly initialised torchvision state dict (real torchvision, the system Python)."""
    code = ("import sys, torch, torchvision; torch.manual_seed(0); "
            "torch.save(getattr(torchvision.models, sys.argv[1])().state_dict(), sys.argv[2])")
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run([SYSTEM_PYTHON, "-c", "import torchvision"],
                                                           capture_output=True).returncode:
        if os.environ.get("CI"):
            raise AssertionError("python3-torchvision missing (needed to make a .pth): run `make setup` as root")
        raise _Skip("python3-torchvision not installed (makes the .pth the command ports)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([SYSTEM_PYTHON, "-c", code, arch or "resnet50", str(path)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True)


# ----------------------------------------------------------------------------------------------
# Page-specific set-up: what a page's reader has done before its commands


def _follow_adding_a_loss():
    """docs/adding-a-loss.md's commands use the loss the page writes: execute its code blocks."""
    import types

    text = (ROOT / "docs" / "adding-a-loss.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    module_block = next(b for b in blocks if b.startswith("# jtl/losses/"))
    name = module_block.splitlines()[0].removeprefix("# ").removesuffix(".py").replace("/", ".")
    module = types.ModuleType(name)
    exec(compile(module_block, f"docs/adding-a-loss.md ({name})", "exec"), module.__dict__)  # noqa: S102
    sys.modules[name] = module
    register_block = next(b for b in blocks if "@register(" in b)
    exec(compile(register_block, "docs/adding-a-loss.md (@register)", "exec"), {})  # noqa: S102
    registered = re.findall(r'@register\("([^"]+)"\)', register_block)

    def undo():
        from jtl.train import pieces

        for piece in registered:
            pieces.PIECES.pop(piece, None)
        sys.modules.pop(name, None)

    return undo


PAGE_SETUP = {"docs/adding-a-loss.md": _follow_adding_a_loss}

# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from jtl.weights.registry import cache_dir

    mp = pytest.MonkeyPatch()
    mp.setenv("JTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))  # shared with the other tests
    # Compiled programs: the persistent cache every other training test of the suite uses (jax keeps
    # the first one set in a process anyway); weights and anything else: a temporary JTL_CACHE.
    mp.setenv("JTL_COMPILATION_CACHE", os.environ.get("JTL_COMPILATION_CACHE", str(cache_dir() / "xla")))
    mp.setenv("JTL_CACHE", str(tmp_path_factory.mktemp("jtl_cache")))
    r = Runner(tmp_path_factory.mktemp("docs"))
    yield r
    mp.undo()
    print("\n".join(f"{dt:6.1f} s  {what}" for what, dt in r.times))


def _run_pages(runner, pages, which=lambda cmd: True):
    if not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("JTL_FASHION_MNIST_DIR"):
        if os.environ.get("CI"):
            pytest.fail("dataset-fashion-mnist missing: run `make setup` as root")
        pytest.skip("the documented commands train on Fashion-MNIST (Debian package dataset-fashion-mnist)")
    failures = []
    for page in pages:
        undo = PAGE_SETUP[page]() if page in PAGE_SETUP else None
        try:
            failures += runner.run_page(page, which)
        finally:
            if undo:
                undo()
    for s in runner.skipped:
        warnings.warn(f"not run: {s}", stacklevel=1)
    assert not failures, f"{len(failures)} documented command(s) failed:\n" + "\n".join(failures)


def test_readme_commands_run(runner):
    """README.md's commands, but those in SLOW."""
    _run_pages(runner, ["README.md"], lambda cmd: cmd.text not in SLOW)


@pytest.mark.slow
def test_slow_and_docs_commands_run(runner):
    """README.md's SLOW commands, then every command of docs/*.md."""
    _run_pages(runner, ["README.md"], lambda cmd: cmd.text in SLOW)
    _run_pages(runner, [p for p in PAGES if p != "README.md"])
