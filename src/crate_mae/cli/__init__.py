"""The ``crate-mae`` command line. Each command group lives in its own module exposing ``register(subparsers)``;
a registered sub-parser sets ``func`` (called with the parsed args, returns an exit code or None)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .._version import __version__

# Command-group modules, in the order they appear in --help.
_GROUPS = ["model", "data", "train", "evaluate", "analyze"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crate-mae", description="CRATE-MAE: white-box masked autoencoders.")
    parser.add_argument("--version", action="version", version=f"crate-mae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"{__name__}.{group}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{group}":
                continue  # group not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
