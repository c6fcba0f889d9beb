"""The ``crate-mae`` command line. Each command group lives in its own module exposing ``register(subparsers)``;
a registered sub-parser sets ``func`` (called with the parsed args, returns an exit code or None)."""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import analyze, data, evaluate, model, train

# Command-group modules, in the order they appear in --help.
_GROUPS = [model, data, train, evaluate, analyze]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crate-mae", description="CRATE-MAE: white-box masked autoencoders.")
    parser.add_argument("--version", action="version", version=f"crate-mae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may stand anywhere on the line, also after options (argparse alone takes them only before)
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and isinstance(getattr(args, "overrides", None), list)
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"crate-mae {args.command}: error: {e}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
