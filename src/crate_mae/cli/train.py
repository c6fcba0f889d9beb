"""`crate-mae pretrain` and `crate-mae demo`."""

from __future__ import annotations

import argparse
import json
import os

from ..demo import run_demo
from ..engine.config import packaged_configs
from ..training import load_config, pretrain


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="masked-completion pretraining (works unchanged under torchrun)",
        description="Pretrain a CRATE-MAE / ViT-MAE. Under torchrun every process runs this command; "
        "rank 0 writes the run folder.",
    )
    p.add_argument(
        "--config",
        required=True,
        metavar="FILE|NAME",
        help="a YAML file, or the name of a config installed with the package: "
        + ", ".join(n for n in packaged_configs() if not n.startswith("finetune")),
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides with YAML values, e.g. optim.epochs=10 data.path=/data/cifar10",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="'auto': newest complete checkpoint in run.output_dir (fresh start if none); or a checkpoint",
    )
    p.add_argument("--output-dir", default=None, help="shortcut for run.output_dir=...")
    add_allow_config_change_arg(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("demo", help="pretrain a small CRATE-MAE on embedded photos for a few minutes, then picture it")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget on this machine (default: 3)")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of configs/demo.yaml")
    p.set_defaults(func=_demo)


def _pretrain(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"run.resume={args.resume}")
    if args.output_dir is not None:
        overrides.append(f"run.output_dir={args.output_dir}")
    if args.allow_config_change:
        overrides.append("run.allow_config_change=true")
    summary = pretrain(load_config(args.config, overrides))
    if summary.get("world_size", 1) == 1 or _rank() == 0:
        print(json.dumps(summary, indent=2))
    return 0


def add_allow_config_change_arg(p: argparse.ArgumentParser) -> None:
    """``--allow-config-change``, shared by the commands that resume a run (pretrain, finetune)."""
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although model, data or schedule keys differ from the checkpoint's config "
        "(shortcut for run.allow_config_change=true)",
    )


def _demo(args: argparse.Namespace) -> int:
    if args.minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    run_demo(args.out, minutes=args.minutes, quick=args.quick, overrides=args.overrides)
    return 0


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))
