"""Paired pretraining trials on cifar10-dev: one recipe change per trial, same seed, same data order, same epoch
budget; every trial scored the same way. The recipe study of docs/evaluation.md is a list of these commands.

    .venv/bin/python benchmarks/recipe_trials.py --epochs 10 --name base
    .venv/bin/python benchmarks/recipe_trials.py --epochs 10 --name blr5e-4 optim.blr=5e-4
    .venv/bin/python benchmarks/recipe_trials.py --epochs 10 --name ista-book model.overrides.ista_step_size=1.0 \
        model.overrides.ista_lambda=0.1
    .venv/bin/python benchmarks/recipe_trials.py --epochs 3 --name legacy-init --legacy-init    # the pre-fix init
    .venv/bin/python benchmarks/recipe_trials.py --random-init --name init                      # no pretraining
    .venv/bin/python benchmarks/recipe_trials.py --table                                        # the study table

Pretrains ``configs/pretrain_cifar.yaml`` plus KEY=VALUE overrides on cifar10-dev/train (``run.resume=auto``: an
interrupted trial continues where it stopped), then measures on cifar10-dev/val:

- masked val loss: masked-patch MSE at the config's mask ratio, fixed masking noise (seed 0) for every trial;
- logistic regression with one fixed C (default 0.01, no sweep, so trials are comparable and fast) on standardised
  cls and mean-pooled tokens of the final output and of every encoder layer (train split -> val split);
- weighted k-NN (k = 20, T = 0.07) on the final cls and mean-pooled tokens;
- per encoder layer (CRATE models): R^c(LN(Z^l) | U^l) and the fraction of non-zeros ||Z^{l+1}||_0 / (N d) of
  the ISTA output (official convention, 512 val images, unmasked).

One JSON line per trial goes to ``--log`` (default runs/study/trials.jsonl); ``--table`` prints them as Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# cifar10-dev: data/cifar10-dev as benchmarks/make_cifar10_dev.py writes it, else the development workspace's copy
DATA = next(
    (d for d in (REPO / "data" / "cifar10-dev", REPO.parent / "shared" / "data" / "cifar10-dev") if d.is_dir()),
    REPO / "data" / "cifar10-dev",
)
CONFIG = REPO / "src" / "crate_mae" / "configs" / "pretrain_cifar.yaml"
RUNS = REPO / "runs" / "study"


@contextlib.contextmanager
def legacy_init():
    """The initialisation before the fix: ``kaiming_uniform_`` with nn.Linear's a = sqrt(5) wherever the code asks
    for the default a = 0 (the ISTA dictionaries and decoder linears); calls that pass ``a`` are unchanged."""
    original = torch.nn.init.kaiming_uniform_

    def old(tensor, a=math.sqrt(5), *args, **kwargs):  # noqa: B008 -- the torch default being restored
        return original(tensor, a, *args, **kwargs)

    torch.nn.init.kaiming_uniform_ = old
    try:
        yield
    finally:
        torch.nn.init.kaiming_uniform_ = original


def masked_val_loss(model, data: Path, mean, std, img_size: int, mask_ratio: float, n: int = 2000) -> float:
    """Mean masked-patch MSE over the first ``n`` val images, masking noise from a fixed seed."""
    from torch.utils.data import DataLoader, Subset

    from crate_mae.data import build_dataset, eval_transform

    ds = build_dataset(data, split="val", transform=eval_transform(img_size, 1.0, mean, std))
    ds = Subset(ds, range(min(n, len(ds))))
    gen = torch.Generator().manual_seed(0)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for imgs, _ in DataLoader(ds, batch_size=250):
            h, w = model.grid_size(imgs)
            noise = torch.rand(imgs.shape[0], h * w, generator=gen)
            total += model(imgs, mask_ratio=mask_ratio, noise=noise).loss.item() * imgs.shape[0]
            count += imgs.shape[0]
    return total / count


def layer_curves(model, data: Path, mean, std, img_size: int, n: int = 512) -> dict[str, list[float]]:
    """Encoder R^c of the MSSA input and non-zero fraction of the ISTA output, per layer (mean over images)."""
    from torch.utils.data import DataLoader, Subset

    from crate_mae.analysis.layerwise import measure_layers
    from crate_mae.data import build_dataset, eval_transform

    ds = build_dataset(data, split="val", transform=eval_transform(img_size, 1.0, mean, std))
    ds = Subset(ds, torch.linspace(0, len(ds) - 1, min(n, len(ds))).round().long().tolist())
    stats = measure_layers(model, DataLoader(ds, batch_size=64), parts=("encoder",))
    return {
        "rc": [round(float(x), 2) for x in stats.series("encoder", "rc_mssa_in")[0]],
        "l0": [round(float(x), 4) for x in stats.series("encoder", "l0")[0]],
    }


def run_trial(args: argparse.Namespace) -> dict:
    import crate_mae
    from crate_mae.evaluation import compute_features, logistic_probe
    from crate_mae.evaluation.knn import knn_evaluate
    from crate_mae.training import load_config, pretrain

    out = RUNS / args.name
    cfg = load_config(
        CONFIG,
        [
            f"data.path={args.data}",
            "data.split=train",
            "data.kind=imagefolder",
            "data.num_workers=0",
            f"run.output_dir={out}",
            "run.progress=false",
            "run.vis_every_epochs=0",
            "run.resume=auto",
            f"run.seed={args.seed}",
            f"optim.epochs={args.epochs}",
            f"optim.warmup_epochs={max(1, round(args.epochs / 10))}",
            *args.overrides,
        ],
    )
    line: dict = {
        "name": args.name,
        "overrides": args.overrides,
        "epochs": args.epochs,
        "seed": args.seed,
        "C": args.C,
        "model": cfg.model.name,
        "legacy_init": args.legacy_init,
    }
    if args.random_init:
        torch.manual_seed(args.seed)
        with legacy_init() if args.legacy_init else contextlib.nullcontext():
            model = crate_mae.create_model(cfg.model.name, img_size=cfg.data.img_size, **cfg.model.overrides)
        line["epochs"] = 0
    else:
        t = time.perf_counter()
        with legacy_init() if args.legacy_init else contextlib.nullcontext():
            summary = pretrain(cfg)
        model = crate_mae.from_pretrained(summary["model_dir"])
        line.update(
            train_s=round(time.perf_counter() - t),
            steps=summary["steps"],
            img_per_s=round(summary["img_per_s"]),
            fixed_loss=[round(summary["fixed_loss_before"], 4), round(summary["fixed_loss_after"], 4)],
        )
    line["params"] = sum(p.numel() for p in model.parameters())
    mean, std, size = cfg.data.mean, cfg.data.std, cfg.data.img_size
    line["val_loss"] = round(masked_val_loss(model, args.data, mean, std, size, cfg.model.mask_ratio), 4)
    depth = len(model.encoder_blocks())
    feats = {
        s: compute_features(
            model,
            args.data,
            s,
            layers=list(range(depth)),
            batch_size=256,
            num_workers=0,
            progress=False,
            mean=mean,
            std=std,
            img_size=size,
            fingerprint=args.name,
        )
        for s in ("train", "val")
    }
    tr, va = feats["train"], feats["val"]

    def logreg(pool: str, layer: int | None) -> float:
        return round(
            logistic_probe(tr.get(pool, layer), tr.labels, va.get(pool, layer), va.labels, Cs=(args.C,), max_iter=300)[
                "top1"
            ],
            2,
        )

    for pool in ("cls", "mean"):
        line[pool] = logreg(pool, None)
        line[f"layers_{pool}"] = [logreg(pool, i) for i in range(depth)]
        line[f"knn_{pool}"] = round(
            knn_evaluate(tr.get(pool), tr.labels, va.get(pool), va.labels, len(tr.classes), ks=(20,))[20]["top1"], 2
        )
    if model.white_box:  # CRATE: the white-box measurements
        line.update(layer_curves(model, args.data, mean, std, size))
    return line


COLUMNS = [
    ("name", "trial"),
    ("epochs", "ep"),
    ("seed", "seed"),
    ("val_loss", "val loss"),
    ("cls", "cls"),
    ("mean", "mean"),
    ("knn_cls", "kNN cls"),
    ("knn_mean", "kNN mean"),
    ("layers_cls", "cls per layer"),
    ("layers_mean", "mean per layer"),
    ("rc", "R^c per layer"),
    ("l0", "non-zeros per layer"),
]


def table(log: Path) -> str:
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"

    def fmt(v) -> str:
        if isinstance(v, list):
            return " / ".join(f"{x:g}" for x in v)
        return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    return head + "".join("| " + " | ".join(fmt(r.get(k)) for k, _ in COLUMNS) + " |\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--name", default="base", help="trial name: run folder runs/study/NAME and the table row")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--C", type=float, default=0.01, help="inverse regularisation of every probe (default 0.01)")
    p.add_argument("--random-init", action="store_true", help="skip pretraining: score the network at init")
    p.add_argument("--legacy-init", action="store_true", help="kaiming a=sqrt(5) as before the init fix")
    p.add_argument("--log", type=Path, default=RUNS / "trials.jsonl")
    p.add_argument("--table", action="store_true", help="print the logged trials as a Markdown table and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.blr=5e-4")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.log))
        return 0
    if not args.data.is_dir():
        print(
            f"data not found: {args.data} (build it: python benchmarks/make_cifar10_dev.py CIFAR10_BATCHES "
            "data/cifar10-dev)",
            file=sys.stderr,
        )
        return 2
    line = run_trial(args)
    print(json.dumps(line))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
