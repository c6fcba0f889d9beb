"""`crate-mae check-data PATH ...`: check a dataset before a long run (formats, counts, unreadable files, speed)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", add_help=False,
                       help="check a dataset: format, counts, unreadable files, loading speed (see --help)")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=_check)


def _check(args) -> int:
    from ..data.__main__ import main

    return main(args.argv)
