"""The ``jtl`` command line.

Every subcommand returns an exit status; a :class:`jtl.errors.JtlError` (a user
mistake) is printed as one line without a traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from jtl.errors import JtlError


def _add_port(sub) -> None:
    p = sub.add_parser("port", help="port torchvision/timm ResNet weights to a jtl (orbax) checkpoint")
    p.add_argument("--arch", help="architecture, e.g. resnet50 (optional for registry names)")
    p.add_argument("--src", required=True, help="a .pth / .safetensors file, or a registry name such as resnet50.tv_in1k")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--no-head", action="store_true", help="drop the classifier (fc) and port the backbone only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(handler=cmd_port)


def cmd_port(args) -> int:
    import os

    from jtl import __version__
    from jtl.models import family_of
    from jtl.weights import port_torchvision, registry, save_ported

    src, fmt, sha = args.src, None, None
    if src in registry.REGISTRY:
        spec = registry.get_spec(src)
        if args.arch and args.arch != spec.arch:
            raise JtlError(f"--src {src} holds {spec.arch} weights, not --arch {args.arch}")
        args.arch, fmt, sha = spec.arch, spec.format, spec.sha256
        src = str(registry.fetch(spec, progress=True))
    if not os.path.exists(src):
        raise JtlError(f"weights file not found: {src} (nor is it a registry name; see jtl.weights.REGISTRY)")
    if not args.arch:
        raise JtlError("--arch is required when --src is a file")
    family_of(args.arch)  # unknown arch -> one-line error before any reading
    if not os.path.exists(src):
        raise JtlError(f"weights file not found: {src}")
    fmt = fmt or ("timm" if src.endswith(".safetensors") else "torchvision")
    variables = port_torchvision(src, args.arch, include_head=not args.no_head)
    fc = variables["params"].get("fc")
    meta = {
        "arch": args.arch,
        "num_classes": int(fc["kernel"].shape[1]) if fc is not None else None,
        "source": os.path.abspath(src) if os.path.exists(src) else src,
        "source_sha256": sha or registry.sha256_file(src),
        "format": fmt,
        "jtl_version": __version__,
    }
    out = save_ported(args.out, variables, meta, overwrite=args.overwrite)
    n = sum(v.size for v in _leaves(variables["params"]))
    print(f"ported {args.arch} ({n:,} parameters, head: {meta['num_classes']}) from {src} to {out}")
    return 0


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def build_parser() -> argparse.ArgumentParser:
    from jtl import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="jtl", description="transfer learning and domain adaptation in JAX")
    parser.add_argument("--version", action="version", version=f"jtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_port(sub)
    from jtl.train.commands import add_parsers as add_train  # noqa: PLC0415

    add_train(sub)
    from jtl.sweep.commands import add_parser as add_sweep  # noqa: PLC0415

    add_sweep(sub)
    from jtl.results.cli import add_parser as add_collect  # noqa: PLC0415

    add_collect(sub)
    from jtl.results.da_report import add_parser as add_da_results  # noqa: PLC0415

    add_da_results(sub)
    from jtl.analysis.rank import add_parser as add_rank  # noqa: PLC0415

    add_rank(sub)
    try:
        from jtl.data.cli import add_parser as add_data  # noqa: PLC0415

        add_data(sub)
    except ImportError:  # pragma: no cover - data CLI optional while developing
        pass
    return parser


class _OneLineLogs:
    """A logging filter: library log records (orbax's background threads, asyncio) lose their
    tracebacks and keep their first line; the error that matters reaches the user as a jtl error.
    ``JTL_DEBUG=1`` keeps everything."""

    def filter(self, record) -> bool:
        if record.exc_info or record.exc_text or record.stack_info:
            record.msg, record.args = (record.getMessage().splitlines() or [""])[0][:300], None
            record.exc_info = record.exc_text = record.stack_info = None
        return True


def _quiet_library_tracebacks() -> None:
    import logging
    import os

    if os.environ.get("JTL_DEBUG"):
        return
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineLogs) for f in logger.filters):
            logger.addFilter(_OneLineLogs())


def main(argv: list[str] | None = None) -> int:
    _quiet_library_tracebacks()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a[2:] for a in extra if a.startswith("--config.")]
    rest = [a for a in extra if not a.startswith("--config.")]
    if rest or (overrides and not getattr(args, "accepts_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(rest or extra)}")
    args.overrides = overrides
    try:
        return int(args.handler(args) or 0)
    except JtlError as e:
        print(f"jtl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("jtl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
