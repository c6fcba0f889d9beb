"""Pretrain the CIFAR-scale CRATE-MAE (configs/pretrain_cifar.yaml) on cifar10-dev/train for a fixed wall-clock
budget on this machine and report throughput and masked-patch MSE on cifar10-dev/val with fixed masks.

    .venv/bin/python benchmarks/pretrain_cifar.py --minutes 10 --out runs/bench_pretrain_cifar

Prints img/s and the val masked MSE at random init and after training; writes ``<out>/benchmark.json`` and the
model to ``<out>/model`` (config.json + model.safetensors; the linear-probe benchmark reuses it). The epoch count
is fitted to the budget by timing a few steps first, so the cosine schedule completes; ``run.max_minutes`` is a hard
stop at 1.2x the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def masked_mse(model: torch.nn.Module, imgs: torch.Tensor, mask_ratio: float, seed: int = 0,
               batch: int = 250) -> float:
    """Mean masked-patch MSE (in normalised pixel space, or per-patch normalised with norm_pix_loss) over ``imgs``
    with masks drawn once from ``seed``: the same masks before and after training."""
    model.eval()
    h, w = model.grid_size(imgs[:1])
    noise = torch.rand(imgs.shape[0], h * w, generator=torch.Generator().manual_seed(seed))
    total = 0.0
    for i in range(0, imgs.shape[0], batch):
        out = model(imgs[i:i + batch], mask_ratio=mask_ratio, noise=noise[i:i + batch])
        total += out.loss.item() * imgs[i:i + batch].shape[0]
    return total / imgs.shape[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-dev"),
                   help="ImageFolder root with train/ and val/ (default: ../shared/data/cifar10-dev)")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget (default 10)")
    p.add_argument("--out", default="runs/bench_pretrain_cifar", help="run folder; the model lands in OUT/model")
    p.add_argument("--val-images", type=int, default=1000, help="val images for the masked MSE (default 1000)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.batch_size=128")
    args = p.parse_args(argv)

    from crate_mae import create_model
    from crate_mae.data import build_dataset, eval_transform
    from crate_mae.demo import epochs_for_budget
    from crate_mae.training import load_config, pretrain

    data = Path(args.data)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise FileNotFoundError(f"{data} needs train/ and val/ ImageFolder splits")
    config = Path(str(resources.files("crate_mae") / "configs" / "pretrain_cifar.yaml"))
    cfg = load_config(config, [f"data.path={data}", "data.split=train", "data.kind=imagefolder",
                               "data.num_workers=1", f"run.output_dir={args.out}", "run.progress=false",
                               "run.vis_every_epochs=0", *args.overrides])
    torch.set_num_threads(torch.get_num_threads())
    train_n = len(build_dataset(data, split="train", kind="imagefolder"))
    cfg.optim.epochs, cfg.optim.warmup_epochs = epochs_for_budget(cfg, args.minutes, train_n)
    cfg.run.max_minutes = 1.2 * args.minutes
    cfg.validate()

    val = build_dataset(data, split="val", kind="imagefolder",
                        transform=eval_transform(cfg.data.img_size, crop_pct=1.0, mean=cfg.data.mean,
                                                 std=cfg.data.std))
    n = min(args.val_images, len(val))
    # A trivial reference: predicting 0 (the dataset mean colour, in normalised space) for every masked pixel.
    imgs = torch.stack([val[i][0] for i in range(0, len(val), max(1, len(val) // n))][:n])

    torch.manual_seed(cfg.run.seed)  # the same initialisation pretrain() builds
    init = create_model(cfg.model.name, img_size=cfg.data.img_size, **cfg.model.overrides)
    mse_start = masked_mse(init, imgs, cfg.model.mask_ratio)
    mse_zero = init.patchify(imgs).pow(2).mean().item() if not init.norm_pix_loss else 1.0
    print(f"{cfg.model.name} {cfg.model.overrides}: {init.num_params() / 1e6:.2f}M params; "
          f"{train_n} train images, {cfg.optim.epochs} epochs fitted to {args.minutes} min; "
          f"val masked MSE at init {mse_start:.4f}, predict-the-mean baseline {mse_zero:.4f} ({n} images, fixed masks)",
          flush=True)

    t = time.perf_counter()
    summary = pretrain(cfg)
    wall = time.perf_counter() - t

    from crate_mae import from_pretrained

    trained = from_pretrained(summary["model_dir"])
    mse_end = masked_mse(trained, imgs, cfg.model.mask_ratio)
    result = {"model": cfg.model.name, "overrides": cfg.model.overrides, "params_M": init.num_params() / 1e6,
              "minutes_budget": args.minutes, "wall_s": wall, "epochs": summary["epochs"], "steps": summary["steps"],
              "stopped": summary["stopped"], "batch": cfg.optim.batch_size, "lr": summary["lr"],
              "img_per_s": summary["img_per_s"], "threads": torch.get_num_threads(),
              "val_images": n, "val_masked_mse_start": mse_start, "val_masked_mse_end": mse_end,
              "val_mse_predict_mean": mse_zero,
              "train_loss_first": summary["first_loss"], "train_loss_last": summary["last_loss"],
              "model_dir": summary["model_dir"]}
    Path(args.out, "benchmark.json").write_text(json.dumps(result, indent=2))
    print(f"\nimg/s (training, {torch.get_num_threads()} threads): {result['img_per_s']:.1f}")
    print(f"val masked MSE (fixed masks): start {mse_start:.4f} -> end {mse_end:.4f} "
          f"({summary['steps']} steps, {summary['epochs']} epochs, {wall / 60:.1f} min); predicting the mean colour "
          f"gives {mse_zero:.4f}")
    print(f"model: {summary['model_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
