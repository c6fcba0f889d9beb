"""Short pretraining trials of the CIFAR config with one change each, scored by fixed-C linear probes of every
encoder layer: a quick way to see whether a recipe change moves the features before paying for a long run.

    .venv/bin/python benchmarks/recipe_trials.py --epochs 3 --out runs/trials/base
    .venv/bin/python benchmarks/recipe_trials.py --epochs 3 --out runs/trials/blr6e-3 optim.blr=6e-3
    .venv/bin/python benchmarks/recipe_trials.py --random-init                      # the same probe at init

Pretrains ``configs/pretrain_cifar.yaml`` (plus KEY=VALUE overrides) on cifar10-dev/train for ``--epochs``, then
fits scikit-learn logistic regression with one fixed C (default 0.01, no sweep, so trials are comparable and fast)
on standardised cls and mean-pooled features of the final output and of each encoder layer, scored on
cifar10-dev/val. One JSON line per trial is appended to ``--log``. docs/evaluation.md lists what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar10-dev"
CONFIG = REPO / "src" / "crate_mae" / "configs" / "pretrain_cifar.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "trials" / "base")
    p.add_argument("--C", type=float, default=0.01, help="inverse regularisation of every probe (default 0.01)")
    p.add_argument("--random-init", action="store_true", help="skip pretraining: probe the network at init")
    p.add_argument("--log", type=Path, default=REPO / "runs" / "trials" / "trials.jsonl")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.blr=6e-3")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data not found: {args.data} (needs ../shared/data/cifar10-dev)", file=sys.stderr)
        return 2
    from crate_mae.evaluation import compute_features, logistic_probe
    from crate_mae.training import load_config, pretrain

    cfg = load_config(CONFIG, [f"data.path={args.data}", "data.split=train", "data.kind=imagefolder",
                               "data.num_workers=0", f"run.output_dir={args.out}", "run.progress=false",
                               "run.vis_every_epochs=0", "run.resume=auto", f"optim.epochs={args.epochs}",
                               f"optim.warmup_epochs={max(1, args.epochs // 10)}", *args.overrides])
    line: dict = {"out": str(args.out), "overrides": args.overrides, "epochs": args.epochs, "C": args.C}
    if args.random_init:
        source, over = cfg.model.name, {"img_size": cfg.data.img_size, **cfg.model.overrides}
        line["epochs"] = 0
    else:
        t = time.perf_counter()
        summary = pretrain(cfg)
        source, over = summary["model_dir"], None
        line.update(train_s=round(time.perf_counter() - t), steps=summary["steps"],
                    fixed_loss=[round(summary["fixed_loss_before"], 4), round(summary["fixed_loss_after"], 4)])
    depth = int(cfg.model.overrides.get("depth", 4))
    feats = {split: compute_features(source, args.data, split, layers=list(range(depth)), batch_size=256,
                                     num_workers=0, progress=False, model_overrides=over,
                                     mean=cfg.data.mean, std=cfg.data.std) for split in ("train", "val")}
    tr, va = feats["train"], feats["val"]

    def score(pool: str, layer: int | None) -> float:  # one C: no sweep
        return round(logistic_probe(tr.get(pool, layer), tr.labels, va.get(pool, layer), va.labels, Cs=(args.C,),
                                    max_iter=300)["top1"], 2)

    for pool in ("cls", "mean"):
        line[pool] = score(pool, None)
        for layer in range(depth):
            line[f"layer{layer + 1}_{pool}"] = score(pool, layer)
    print(json.dumps(line))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
