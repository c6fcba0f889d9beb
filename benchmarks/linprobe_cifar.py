"""Linear-probe and k-NN accuracy on cifar10-dev: pretrained CRATE-MAE vs the same network at random init vs an
equal-budget ViT-MAE of the same width.

    .venv/bin/python benchmarks/linprobe_cifar.py                       # pretrains both models (CPU: ~25 min)
    .venv/bin/python benchmarks/linprobe_cifar.py --ckpt runs/crate_mae_cifar/model --vit-ckpt runs/vit/model

Pretraining uses ``configs/pretrain_cifar.yaml`` (CRATE-MAE, 32 px, patch 4) through ``crate_mae.training.pretrain``
with the budget rule of ``benchmarks/pretrain_cifar.py`` (epochs fitted to ``--minutes`` of this machine, hard stop at
1.2x); the ViT-MAE gets the same width/depth/heads, a decoder of the same width and depth, the same data, recipe
and wall-clock budget.
Every model is then probed on the unmasked cls token of its final encoder output:

- paper protocol: scikit-learn logistic regression on standardised features, C chosen on 10 % of train;
- MAE protocol: BatchNorm1d(affine=False) + Linear with LARS, 90 epochs, warm-up 10, lr 6.4;
- weighted k-NN (cosine, T = 0.07), best of k in {10, 20, 100, 200}.

Result JSON files go to ``--out``/results (``crate-mae compare OUT/results/*.json``), the table to
``--out``/table.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar10-dev"
CONFIG = REPO / "src" / "crate_mae" / "configs" / "pretrain_cifar.yaml"


def pretrain_model(name: str, overrides: dict, out: Path, args: argparse.Namespace) -> Path:
    """Pretrain with the CIFAR config (model swapped for ViT-MAE when asked) under the pretraining benchmark's
    budget rule: epochs fitted to ``--minutes`` by timing a few steps, hard stop at 1.2x. Returns the model folder."""
    from crate_mae.training import load_config, pretrain
    from crate_mae.training.demo import epochs_for_budget

    model_dir = out / "model"
    if (model_dir / "config.json").is_file() and not args.retrain:
        print(f"reusing {model_dir}")
        return model_dir
    cfg = load_config(CONFIG, {
        "model.name": name, "model.overrides": overrides, "data.path": str(args.data), "data.split": "train",
        "data.kind": "imagefolder", "data.num_workers": args.workers, "run.output_dir": str(out),
        "run.vis_every_epochs": 0, "run.resume": "auto", "run.progress": False})
    cfg.optim.epochs, cfg.optim.warmup_epochs = epochs_for_budget(cfg, args.minutes, 10_000)
    cfg.run.max_minutes = 1.2 * args.minutes
    cfg.validate()
    summary = pretrain(cfg)
    print(f"{name}: {summary['steps']} steps, {summary['epochs']} of {cfg.optim.epochs} epochs ({summary['stopped']}),"
          f" masked loss on fixed images {summary['fixed_loss_before']:.4f} -> {summary['fixed_loss_after']:.4f}, "
          f"{summary['elapsed_s']:.0f}s")
    return Path(summary["model_dir"])


def evaluate(label: str, source, args: argparse.Namespace, out: Path, overrides: dict | None = None) -> list[dict]:
    from crate_mae.evaluation import compute_features, knn, linprobe, summary_line, write_result

    feats = {}
    for split in ("train", "val"):
        t = time.perf_counter()
        feats[split] = compute_features(source, args.data, split, batch_size=256, num_workers=args.workers,
                                        progress=False, model_overrides=overrides, mean=args.mean, std=args.std,
                                        limit=args.limit)
        print(f"{label}: {split} features {tuple(feats[split].cls.shape)} in {time.perf_counter() - t:.0f}s")
    results = [linprobe(feats["train"], feats["val"], "sklearn", label=f"{label} / logreg"),
               linprobe(feats["train"], feats["val"], "mae", label=f"{label} / BN+LARS"),
               knn(feats["train"], feats["val"], label=f"{label} / k-NN")]
    for r, name in zip(results, ("logreg", "lars", "knn")):
        write_result(r, out / "results" / f"{label.replace(' ', '_')}_{name}.json")
        print(summary_line(r))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--ckpt", help="pretrained CRATE-MAE (skips its pretraining)")
    p.add_argument("--vit-ckpt", help="pretrained ViT-MAE (skips its pretraining)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_linprobe_cifar")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="pretraining budget per model, as benchmarks/pretrain_cifar.py (default 10)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, help="probe on this many images per split (smoke test)")
    p.add_argument("--retrain", action="store_true", help="pretrain again even if --out holds a model")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data not found: {args.data} (needs ../shared/data/cifar10-dev)", file=sys.stderr)
        return 2
    import yaml

    raw = yaml.safe_load(CONFIG.read_text())
    crate_cfg = raw["model"]
    args.mean, args.std = raw["data"]["mean"], raw["data"]["std"]  # every model sees the same normalisation
    crate_over = dict(crate_cfg["overrides"])
    d, depth, heads = crate_over["embed_dim"], crate_over["depth"], crate_over["num_heads"]
    vit_over = dict(patch_size=crate_over["patch_size"], embed_dim=d, depth=depth, num_heads=heads,
                    decoder_embed_dim=d, decoder_depth=crate_over["decoder_depth"], decoder_num_heads=heads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    crate_ckpt = args.ckpt or pretrain_model(crate_cfg["name"], crate_over, args.out / "crate_mae", args)
    vit_ckpt = args.vit_ckpt or pretrain_model("vit_mae_base", vit_over, args.out / "vit_mae", args)
    rows = []
    rows += evaluate("CRATE-MAE pretrained", crate_ckpt, args, args.out)
    rows += evaluate("CRATE-MAE random init", crate_cfg["name"], args, args.out, {"img_size": 32, **crate_over})
    rows += evaluate("ViT-MAE pretrained", vit_ckpt, args, args.out)

    table = ["| model | logreg top-1 | BN+LARS top-1 | k-NN top-1 (best k) | logreg top-5 |", "|---|---:|---:|---:|---:|"]
    for i in range(0, len(rows), 3):
        lr, lars, kn = rows[i:i + 3]
        label = lr["config"]["label"].split(" / ")[0]
        table.append(f"| {label} | {lr['metrics']['top1']:.2f} | {lars['metrics']['top1']:.2f} | "
                     f"{kn['metrics']['top1']:.2f} (k={kn['details']['best_k']}) | {lr['metrics']['top5']:.2f} |")
    text = "\n".join(table)
    print("\n" + text)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps(
        {"elapsed_s": time.perf_counter() - t0, "args": {k: str(v) for k, v in vars(args).items()},
         "results": rows}, indent=2))
    print(f"total {time.perf_counter() - t0:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
