"""Linear-probe and k-NN accuracy on cifar10-dev: pretrained CRATE-MAE vs the same network at random init vs an
equal-budget ViT-MAE of the same width.

    .venv/bin/python benchmarks/linprobe_cifar.py                       # pretrains both models (CPU: ~25 min)
    .venv/bin/python benchmarks/linprobe_cifar.py --ckpt runs/crate_mae_cifar/model --vit-ckpt runs/vit/model

    # both pretrainings side by side, one thread each (on 2 cores ~20 % more images/s in total), then the probes:
    for m in crate vit; do OMP_NUM_THREADS=1 .venv/bin/python benchmarks/linprobe_cifar.py --minutes 45 \
        --out runs/lp45 --pretrain-only $m & done; wait
    .venv/bin/python benchmarks/linprobe_cifar.py --out runs/lp45 --minutes 45

Pretraining uses ``configs/pretrain_cifar.yaml`` (CRATE-MAE, 32 px, patch 4) through ``crate_mae.training.pretrain``
with the budget rule of ``benchmarks/pretrain_cifar.py`` (epochs fitted to ``--minutes`` of this machine, hard stop at
1.2x); the ViT-MAE gets the same width/depth/heads, a decoder of the same width and depth, the same data, recipe
and wall-clock budget.
Every model is then probed on unmasked images. On the cls token of the final encoder output (the paper's choice):

- paper protocol: scikit-learn logistic regression on standardised features, C chosen on 10 % of train;
- MAE protocol: BatchNorm1d(affine=False) + Linear with LARS, 90 epochs, warm-up 10, lr 6.4;
- weighted k-NN (cosine, T = 0.07), best of k in {10, 20, 100, 200}.

and, because the cls token gets no direct training signal in masked completion, also on the mean-pooled patch tokens
(logreg, k-NN) and, per encoder layer, logreg on cls and mean-pooled tokens.

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
    from crate_mae.demo import epochs_for_budget
    from crate_mae.training import load_config, pretrain

    model_dir = out / "model"
    if (model_dir / "config.json").is_file() and not args.retrain:
        print(f"reusing {model_dir}")
        return model_dir
    cfg = load_config(CONFIG, {
        "model.name": name, "model.overrides": overrides, "data.path": str(args.data), "data.split": "train",
        "data.kind": "imagefolder", "data.num_workers": args.train_workers, "run.output_dir": str(out),
        "run.vis_every_epochs": 0, "run.resume": "auto", "run.progress": False})
    cfg.optim.epochs, cfg.optim.warmup_epochs = epochs_for_budget(cfg, args.minutes, 10_000)
    cfg.run.max_minutes = 1.2 * args.minutes
    cfg.validate()
    summary = pretrain(cfg)
    print(f"{name}: {summary['steps']} steps, {summary['epochs']} of {cfg.optim.epochs} epochs ({summary['stopped']}),"
          f" masked loss on fixed images {summary['fixed_loss_before']:.4f} -> {summary['fixed_loss_after']:.4f}, "
          f"{summary['elapsed_s']:.0f}s")
    return Path(summary["model_dir"])


def evaluate(label: str, source, args: argparse.Namespace, out: Path, overrides: dict | None = None) -> dict:
    """Features of every encoder layer, then the probes: on the final cls token (logreg, BN+LARS, k-NN), on the
    final mean-pooled patch tokens (logreg, k-NN), and logreg on cls / mean of each intermediate layer."""
    from crate_mae.evaluation import compute_features, knn, linprobe, summary_line, write_result

    depth = int((overrides or {}).get("depth") or _depth(source))
    feats = {}
    for split in ("train", "val"):
        t = time.perf_counter()
        feats[split] = compute_features(source, args.data, split, layers=list(range(depth)), batch_size=256,
                                        num_workers=args.workers, progress=False, model_overrides=overrides,
                                        mean=args.mean, std=args.std, limit=args.limit)
        print(f"{label}: {split} features {tuple(feats[split].cls.shape)} in {time.perf_counter() - t:.0f}s")
    tr, va = feats["train"], feats["val"]
    main = {"logreg": linprobe(tr, va, "sklearn", label=f"{label} / logreg"),
            "lars": linprobe(tr, va, "mae", label=f"{label} / BN+LARS"),
            "knn": knn(tr, va, label=f"{label} / k-NN"),
            "mean_logreg": linprobe(tr, va, "sklearn", pool="mean", label=f"{label} / mean-pool logreg"),
            "mean_knn": knn(tr, va, pool="mean", label=f"{label} / mean-pool k-NN")}
    layers = {(layer, pool): linprobe(tr, va, "sklearn", pool=pool, layer=layer,
                                      label=f"{label} / layer {layer + 1} {pool} logreg")
              for layer in range(depth) for pool in ("cls", "mean")}
    stem = label.replace(" ", "_")
    for name, r in main.items():
        write_result(r, out / "results" / f"{stem}_{name}.json")
        print(summary_line(r))
    for (layer, pool), r in layers.items():
        write_result(r, out / "results" / f"{stem}_layer{layer + 1}_{pool}_logreg.json")
    return {"label": label, "main": main, "layers": layers, "depth": depth}


def _depth(source) -> int:
    from crate_mae.checkpoint import load_model
    from crate_mae.evaluation.features import encoder_blocks

    return len(encoder_blocks(load_model(source)[0]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--ckpt", help="pretrained CRATE-MAE (skips its pretraining)")
    p.add_argument("--vit-ckpt", help="pretrained ViT-MAE (skips its pretraining)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_linprobe_cifar")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="pretraining budget per model, as benchmarks/pretrain_cifar.py (default 10)")
    p.add_argument("--workers", type=int, default=2, help="loader processes for feature extraction (default 2)")
    p.add_argument("--train-workers", type=int, default=0,
                   help="loader processes for pretraining (default 0: on a 2-core machine a loader process slows "
                        "the training threads more than it saves)")
    p.add_argument("--limit", type=int, help="probe on this many images per split (smoke test)")
    p.add_argument("--retrain", action="store_true", help="pretrain again even if --out holds a model")
    p.add_argument("--pretrain-only", choices=("crate", "vit"),
                   help="pretrain just this model and stop (to run both pretrainings side by side, one thread each)")
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
    if args.pretrain_only == "crate":
        pretrain_model(crate_cfg["name"], crate_over, args.out / "crate_mae", args)
        return 0
    if args.pretrain_only == "vit":
        pretrain_model("vit_mae_base", vit_over, args.out / "vit_mae", args)
        return 0
    crate_ckpt = args.ckpt or pretrain_model(crate_cfg["name"], crate_over, args.out / "crate_mae", args)
    vit_ckpt = args.vit_ckpt or pretrain_model("vit_mae_base", vit_over, args.out / "vit_mae", args)
    rows = [evaluate("CRATE-MAE pretrained", crate_ckpt, args, args.out),
            evaluate("CRATE-MAE random init", crate_cfg["name"], args, args.out, {"img_size": 32, **crate_over}),
            evaluate("ViT-MAE pretrained", vit_ckpt, args, args.out)]

    def top1(r: dict) -> float:
        return r["metrics"]["top1"]

    table = ["| model | cls logreg | cls BN+LARS | cls k-NN (best k) | mean-pool logreg | mean-pool k-NN | "
             "cls logreg top-5 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        m = row["main"]
        table.append(f"| {row['label']} | {top1(m['logreg']):.2f} | {top1(m['lars']):.2f} | "
                     f"{top1(m['knn']):.2f} (k={m['knn']['details']['best_k']}) | {top1(m['mean_logreg']):.2f} | "
                     f"{top1(m['mean_knn']):.2f} | {m['logreg']['metrics']['top5']:.2f} |")
    depth = max(row["depth"] for row in rows)
    table += ["", "Logistic-regression top-1 on each encoder layer's output (before the final norm), cls / mean-pool:",
              "", "| model | " + " | ".join(f"layer {i + 1}" for i in range(depth)) + " |",
              "|---|" + "---:|" * depth]
    for row in rows:
        cells = [f"{top1(row['layers'][(i, 'cls')]):.2f} / {top1(row['layers'][(i, 'mean')]):.2f}"
                 if (i, "cls") in row["layers"] else "" for i in range(depth)]
        table.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    text = "\n".join(table)
    print("\n" + text)
    (args.out / "table.md").write_text(text + "\n")
    flat = [r for row in rows for r in [*row["main"].values(), *row["layers"].values()]]
    (args.out / "summary.json").write_text(json.dumps(
        {"elapsed_s": time.perf_counter() - t0, "args": {k: str(v) for k, v in vars(args).items()},
         "results": flat}, indent=2))
    print(f"total {time.perf_counter() - t0:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
