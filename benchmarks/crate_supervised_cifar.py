"""A small supervised CRATE trained from random init on cifar10-dev, and what its layers do before and after.

    # 1. train (one CPU thread, about 15-25 minutes on the development machine); the exact command is TRAIN below:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/crate_supervised_cifar.py train
    # 2. the network it started from (rebuilt with the run's seed by the fine-tuning code itself, saved with the run's
    #    normalisation, as OUT/init), layer-wise R^c / R / sparsity at init vs trained on 512 val images (figure +
    #    JSON, the numbers `crate-mae analyze` gives for OUT and OUT/init), and the report of the trained model on 8
    #    val images:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/crate_supervised_cifar.py evaluate

Model: ``crate_supervised_tiny`` at CIFAR scale (32 px, patch 4, width 128, depth 4, 4 heads, 10 classes; 0.22M
parameters). Recipe: AdamW lr 1e-3, batch 128, 2 warm-up epochs then cosine, weight decay 0.05, label smoothing 0.1,
RandomResizedCrop(0.35-1) + flip, no RandAugment / mixup / cutmix / random erasing / drop path / layer decay (small
data, short run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar10-dev"
OUT = REPO / "runs" / "crate_supervised_cifar"
CIFAR_MEAN, CIFAR_STD = "[0.4914,0.4822,0.4465]", "[0.2470,0.2435,0.2616]"


def train_argv(data: Path, out: Path, epochs: int = 25, batch_size: int = 128) -> list[str]:
    """The ``crate-mae finetune`` command line of the run (README / docs quote it)."""
    return [
        "finetune",
        "--ckpt",
        "crate_supervised_tiny",
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "data.img_size=32",
        f"data.mean={CIFAR_MEAN}",
        f"data.std={CIFAR_STD}",
        'model.overrides={"patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4}',
        "model.drop_path_rate=0",
        "aug.rand_augment=null",
        "aug.mixup=0",
        "aug.cutmix=0",
        "aug.reprob=0",
        "aug.scale=[0.35,1]",
        "optim.lr=0.001",
        "optim.layer_decay=1.0",
        f"optim.epochs={epochs}",
        f"optim.warmup_epochs={min(2, epochs)}",
        f"optim.batch_size={batch_size}",
        "data.num_workers=0",
        "run.progress=false",
    ]


def train(args) -> int:
    from crate_mae.cli import main

    argv = train_argv(args.data, args.out, args.epochs, args.batch_size)
    print("crate-mae " + " ".join(f"'{a}'" if "{" in a or "[" in a else a for a in argv))
    return main(argv)


def evaluate(args) -> int:
    import crate_mae
    from crate_mae.analysis.figures import pyplot, save_figure
    from crate_mae.analysis.layerwise import measure_layers
    from crate_mae.analysis.report import write_report
    from crate_mae.data import build_dataset, eval_transform
    from crate_mae.evaluation.finetune import build_classifier
    from crate_mae.evaluation.finetune_config import load_finetune_config

    trained = crate_mae.load_checkpoint(args.out / "best")
    cfg = load_finetune_config(args.out / "config.yaml")
    torch.manual_seed(cfg.run.seed)  # what Finetuning does right before it builds the model
    init = build_classifier(cfg, trained.config.num_classes, cfg.data.img_size).eval()
    init.data_config = dict(trained.data_config)
    init.provenance = {"random_init": True, "seed": cfg.run.seed, "classes": trained.provenance.get("classes")}
    crate_mae.save_pretrained(init, args.out / "init")

    dc = trained.data_config
    val = build_dataset(args.data, split="val", transform=eval_transform(dc["img_size"], 1.0, dc["mean"], dc["std"]))
    pick = torch.linspace(0, len(val) - 1, 512).round().long().tolist()
    imgs = torch.stack([val[i][0] for i in pick])
    stats = {k: measure_layers(m, imgs, batch_size=64) for k, m in (("init", init), ("trained", trained))}
    figures = args.out / "figures"
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, metric, title in (
        (axes[0], "rc_mssa_in", "compression R^c(LN(Z^l) | U^l)"),
        (axes[1], "rate_out", "coding rate R(Z^{l+1})"),
        (axes[2], "l0", "non-zeros ||Z^{l+1}||_0 / (N d)"),
    ):
        for k, st in stats.items():
            mean, std = st.series("encoder", metric)
            layers = list(range(1, len(mean) + 1))
            ax.errorbar(layers, mean, yerr=std, marker="o", capsize=3, label=k)
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(layers)
        ax.legend()
    fig.suptitle(
        "supervised CRATE (32 px, patch 4, width 128, depth 4) on 512 cifar10-dev val images, official convention",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, figures / "layerwise_init_vs_trained.png")
    curves = {
        k: {
            m: [round(float(x), 4) for x in st.series("encoder", m)[0]]
            for m in ("rc_mssa_in", "rc_z_half", "rate_out", "l0")
        }
        for k, st in stats.items()
    }
    (figures / "layerwise_init_vs_trained.json").write_text(json.dumps(curves, indent=2))
    print(json.dumps(curves, indent=2))
    # = crate-mae report --ckpt OUT --images DATA/val --num-images 8 --out OUT/report
    print(write_report(trained, args.out / "report", images=args.data / "val", num_images=8, device="cpu"))
    result = json.loads((args.out / "result.json").read_text())
    print(
        {k: round(v, 2) for k, v in result["metrics"].items()},
        "epochs",
        result["details"]["epochs"],
        "minutes",
        round(result["details"]["elapsed_s"] / 60, 1),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=("train", "evaluate"))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data not found: {args.data} (needs ../shared/data/cifar10-dev)", file=sys.stderr)
        return 2
    return train(args) if args.cmd == "train" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
