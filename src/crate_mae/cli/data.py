"""`crate-mae check-data PATH ...`: check a dataset before a long run (formats, counts, unreadable files, speed).
`crate-mae make-shards SRC OUT`: write an image folder as WebDataset shards (see docs/data.md, "Data at scale")."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.__main__ import add_check_arguments, check
from ..data.shard_writer import make_shards
from ..data.shards import DEFAULT_SHARD_SIZE, MANIFEST_NAME


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data",
        help="check a dataset: format, counts, unreadable files, loading speed",
        description="Detect the format, print sample and class counts, decode every sample (--limit "
        "for a subset), list unreadable files and the loading speed. Exit status: 0 all "
        "readable, 1 some unreadable, 2 the dataset could not be opened.",
    )
    add_check_arguments(p)
    p.set_defaults(func=check)

    p = sub.add_parser(
        "make-shards",
        help="write an ImageFolder tree or flat image folder as WebDataset tar shards "
        "(needs pip install 'crate-mae[shards]')",
    )
    p.add_argument("src", help="ImageFolder tree (SRC/<class>/<image>) or flat folder of images")
    p.add_argument("out", help="new (or empty) output folder: shard-*.tar + shards.json")
    p.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        metavar="N",
        help=f"samples per shard (default {DEFAULT_SHARD_SIZE}; aim for 100 MB - 1 GB per shard)",
    )
    p.add_argument(
        "--split",
        action="append",
        default=None,
        metavar="S",
        help="convert SRC/S into OUT/S; repeat for several splits (default: SRC itself into OUT)",
    )
    p.add_argument("--kind", default="auto", choices=("auto", "imagefolder", "folder"))
    p.add_argument("--workers", type=int, default=0, help="decode in N processes (default: in this one)")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_make_shards)


def _make_shards(args) -> int:
    jobs = [(Path(args.src) / s, Path(args.out) / s) for s in args.split] if args.split else [(args.src, args.out)]
    for src, out in jobs:
        desc = make_shards(
            src,
            out,
            shard_size=args.shard_size,
            kind=args.kind,
            strict=args.strict,
            workers=args.workers,
            progress=False if args.quiet else None,
        )
        info = desc["crate_mae"]
        size = sum(s["filesize"] for s in desc["shardlist"])
        print(
            f"wrote {info['num_samples']} samples ({len(info['classes'])} classes) from {src} into "
            f"{len(desc['shardlist'])} shard(s), {size / 2**20:.1f} MiB, manifest {Path(out) / MANIFEST_NAME}; "
            f"unreadable files skipped: {len(info['skipped'])}"
        )
        for f in info["skipped"]:
            print(f"  unreadable: {f}")
    return 0
