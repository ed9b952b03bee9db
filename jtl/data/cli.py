"""``jtl data show NAME[:SPLIT]... --out grid.png`` and ``jtl data stats NAME...``.

``add_parser(subparsers)`` registers ``data``; each sub-command stores its handler in
``args.handler`` (alias ``args.func``): ``handler(args) -> exit code``. Options reach :func:`jtl.data.load` as
``-o KEY=VALUE`` (values parsed as Python literals, e.g. ``-o classes=(5,6)``).
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import numpy as np

from jtl.config import SEED_MAX
from jtl.data import loading, spec as spec_lib
from jtl.errors import DataError
from jtl.plotting import save_png


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help="look at datasets: sample grids and counts")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{show,stats}")
    show = sub.add_parser("show", help="draw a grid of samples, one row per domain")
    show.add_argument("names", nargs="+", metavar="NAME[:SPLIT]",
                      help="dataset names, each with its own split if given, e.g. fashion_mnist:mnistm:test")
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument("--split", default="train", help="the split of names given without one (default: train)")
    show.add_argument("--n", type=int, default=8, help="samples per row")
    show.add_argument("--seed", type=int, default=0, help="picks the samples and seeded splits")
    show.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="load() option")
    show.set_defaults(func=show_command, handler=show_command)
    stats = sub.add_parser("stats", help="print counts per split and class")
    stats.add_argument("names", nargs="+", metavar="NAME")
    stats.add_argument("--seed", type=int, default=0)
    stats.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="load() option")
    stats.set_defaults(func=stats_command, handler=stats_command)
    return parser


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What each load() option must be: (check, description). loading.load checks ranges and meaning.
_OPTION_TYPES = {
    "classes": (lambda v: isinstance(v, (tuple, list)) and all(_is_int(c) for c in v), "a tuple of class ids, e.g. (5,6)"),
    "limit": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "seed": (lambda v: _is_int(v) and 0 <= v <= SEED_MAX, f"an integer in 0..{SEED_MAX}"),
    "val_fraction": (lambda v: _is_int(v) or isinstance(v, float), "a number in [0, 1)"),
    "test_fraction": (lambda v: _is_int(v) or isinstance(v, float), "a number in [0, 1)"),
    "on_error": (lambda v: v in ("raise", "skip"), "raise or skip"),
    "download": (lambda v: isinstance(v, bool), "True or False"),
    "backgrounds": (lambda v: isinstance(v, str), "a path"),
    "data_dir": (lambda v: isinstance(v, str), "a path"),
    "image_key": (lambda v: isinstance(v, str), "a feature name"),
    "label_key": (lambda v: isinstance(v, str), "a feature name"),
}


def check_option(key: str, value) -> None:
    """Refuse an unknown ``load()`` option or a value of the wrong type, in one line."""
    if key not in loading.OPTIONS:
        raise DataError(f"unknown option {key!r}; known: {', '.join(sorted(loading.OPTIONS))}")
    ok, what = _OPTION_TYPES.get(key, (lambda v: True, ""))
    if not ok(value):
        raise DataError(f"option {key} must be {what}, got {value!r}")


def _options(pairs: list[str], seed: int) -> dict:
    if not _OPTION_TYPES["seed"][0](seed):
        raise DataError(f"--seed must be an integer in 0..{SEED_MAX}, got {seed}")
    out = {"seed": seed}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise DataError(f"option {pair!r} must look like KEY=VALUE")
        key = key.strip()
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
        check_option(key, out[key])
    return out


SPLIT_WORDS = ("train", "val", "test", "all")  # split names of built-in datasets and folders
_SPLIT_SUFFIX = re.compile(r":([A-Za-z_]+(?:\[[^\]]*\])?)$")  # ":test", TFDS's ":train[:10%]"


def name_and_split(text: str, default: str) -> tuple[str, str]:
    """``NAME[:SPLIT]`` -> ``(NAME, SPLIT)``; ``(text, default)`` without a split. A last ``:WORD`` is a
    split when the text before it is a dataset name and WORD is a split name (any TFDS split
    expression for ``tfds:`` names), so ``fashion_mnist:mnistm`` stays a name and
    ``fashion_mnist:mnistm:test``, ``folder:/data/x:test``, ``tfds:cifar10:train[:10%]`` carry splits."""
    m = _SPLIT_SUFFIX.search(text)
    if m is not None:
        name, split = text[: m.start()], m.group(1)
        try:
            kind = spec_lib.parse(name).kind
        except DataError:
            kind = None
        if kind is not None and (split in SPLIT_WORDS or kind == "tfds"):
            return name, split
    return text, default


def _rows(names: list[str], split: str, n: int, seed: int, options: dict) -> list[tuple[str, object, np.ndarray]]:
    """(row title, source, positions): shifted datasets show the same underlying images as their source row."""
    rng = np.random.default_rng(seed)
    rows, chosen = [], {}
    for text in names:
        name, split_of_name = name_and_split(text, split)
        sp = spec_lib.parse(name)
        src = loading.load(name, split_of_name, **options)
        if sp.shifts:
            base = str(sp.source)
            if base not in chosen:
                chosen[base] = np.sort(src.index[rng.choice(len(src), min(n, len(src)), replace=False)])
                held = loading.load(base, "test" if sp.base == "fashion_mnist" else "all", **options)
                rows.append((f"{base} (source)", held, np.searchsorted(held.index, chosen[base])))
            pos = np.searchsorted(src.index, chosen[base])
            pos = pos[(pos < len(src)) & (src.index[np.minimum(pos, len(src) - 1)] == chosen[base])]
        else:
            pos = np.sort(rng.choice(len(src), min(n, len(src)), replace=False))
        rows.append((text, src, pos))
    return rows


def show(names: list[str], out: str, split: str = "train", n: int = 8, seed: int = 0, **options) -> Path:
    """Draw ``n`` samples per domain (rows; ``NAME[:SPLIT]``, ``split`` where none is given) to the
    PNG ``out``; returns its path."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"--n (samples per row) must be a positive integer, got {n!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(names, split, n, seed, {"seed": seed, **options})
    cols = max(len(pos) for _, _, pos in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols + 2, 1.35 * len(rows)), squeeze=False)
    for r, (title, src, pos) in enumerate(rows):
        batch = src.getitems(pos) if len(pos) else {"image": [], "label": []}
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(pos):
                ax.axis("off")
                continue
            img = np.asarray(batch["image"][c])
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_title(src.info.class_names[int(batch["label"][c])][:12], fontsize=7)
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    out_path = Path(out)
    try:
        save_png(fig, out_path, dpi=100)
    except OSError as e:
        raise DataError(f"cannot write {out_path} ({e.strerror or type(e).__name__}); choose another --out") from None
    finally:
        plt.close(fig)
    return out_path


def stats(name: str, **options) -> str:
    """A table of example counts: one row per class, one column per split."""
    info = loading.info(name, **options)
    counts = {}
    for split in info.splits:
        try:
            src = loading.load(name, split, **options)
        except DataError:
            continue
        counts[split] = np.bincount(src.labels, minlength=info.num_classes)
    shape = "x".join("?" if d is None else str(d) for d in info.image_shape)
    width = max(12, *(len(c) + 4 for c in info.class_names))
    lines = [f"{name}  ({shape}, {info.num_classes} classes)", "class".ljust(width) + "".join(f"{s:>9}" for s in counts)]
    for k, cname in enumerate(info.class_names):
        lines.append(f"{k:<3} {cname}".ljust(width) + "".join(f"{c[k]:>9}" for c in counts.values()))
    lines.append("total".ljust(width) + "".join(f"{c.sum():>9}" for c in counts.values()))
    return "\n".join(lines)


def show_command(args) -> int:
    out = show(args.names, args.out, args.split, args.n, **_options(args.option, args.seed))
    print(f"wrote {out}")
    return 0


def stats_command(args) -> int:
    options = _options(args.option, args.seed)
    print("\n\n".join(stats(name, **options) for name in args.names))
    return 0
