"""Does pretraining make CRATE-MAE's layers compress and sparsify? Measure the encoder's R^c and sparsity per layer
at random initialisation and after a short pretraining, on the same images.

    .venv/bin/python benchmarks/layerwise_demo.py --minutes 10 --out runs/layerwise_demo          # pretrain first
    .venv/bin/python benchmarks/layerwise_demo.py --ckpt runs/bench_pretrain_cifar/model           # reuse a model

Pretraining uses configs/pretrain_cifar.yaml on ../shared/data/cifar10-dev/train (epochs fitted to the budget, as in
benchmarks/pretrain_cifar.py). The random-init model is the one pretraining starts from (same seed, same config).
Measurements: cifar10-dev/val images (evenly spaced over classes), unmasked, ``official`` convention. Prints one
table and writes ``OUT/layerwise_{init,trained}.{json,csv,png}`` and ``OUT/layerwise_demo.json``.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-dev"),
                   help="ImageFolder root with train/ and val/ (default: ../shared/data/cifar10-dev)")
    p.add_argument("--ckpt", default=None, help="a pretrained model directory; skips pretraining")
    p.add_argument("--minutes", type=float, default=10.0, help="pretraining wall-clock budget")
    p.add_argument("--epochs", type=int, default=None,
                   help="train this many epochs instead of fitting them to --minutes (still stopped at 1.2x it)")
    p.add_argument("--out", default="runs/layerwise_demo")
    p.add_argument("--num-images", type=int, default=256, help="val images measured")
    p.add_argument("--convention", choices=["official", "raw"], default="official")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="pretraining config overrides")
    args = p.parse_args(argv)

    from crate_mae import create_model, from_pretrained
    from crate_mae.analysis import measure_layers
    from crate_mae.analysis.inputs import find_images, load_images, model_normalization
    from crate_mae.data import build_dataset
    from crate_mae.demo import epochs_for_budget
    from crate_mae.training import load_config, pretrain

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = Path(str(resources.files("crate_mae") / "configs" / "pretrain_cifar.yaml"))
    cfg = load_config(config, [f"data.path={data}", "data.split=train", "data.kind=imagefolder",
                               "data.num_workers=1", f"run.output_dir={out / 'pretrain'}", "run.progress=false",
                               "run.vis_every_epochs=0", *args.overrides])
    info: dict = {}
    if args.ckpt:
        trained = from_pretrained(args.ckpt)
        info["checkpoint"] = args.ckpt
        model_cfg = {k: trained.config[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads",
                                                   "decoder_depth", "decoder_num_heads", "norm_pix_loss")}
        seed = int(cfg.run.seed)
    else:
        train_n = len(build_dataset(data, split="train", kind="imagefolder"))
        if args.epochs:
            cfg.optim.epochs, cfg.optim.warmup_epochs = args.epochs, min(cfg.optim.warmup_epochs, args.epochs / 4)
        else:
            cfg.optim.epochs, cfg.optim.warmup_epochs = epochs_for_budget(cfg, args.minutes, train_n)
        cfg.run.max_minutes = 1.2 * args.minutes
        cfg.validate()
        t = time.perf_counter()
        summary = pretrain(cfg)
        info.update(pretrain_minutes=(time.perf_counter() - t) / 60, epochs=summary["epochs"],
                    steps=summary["steps"], train_loss_first=summary["first_loss"],
                    train_loss_last=summary["last_loss"], checkpoint=summary["model_dir"])
        trained = from_pretrained(summary["model_dir"])
        model_cfg = dict(img_size=cfg.data.img_size, **cfg.model.overrides)
        seed = int(cfg.run.seed)
    torch.manual_seed(seed)  # the initialisation pretrain() starts from
    init = create_model("crate_mae_tiny", **model_cfg)
    init.data_config = trained.data_config

    norm = model_normalization(trained)
    files = find_images(data / "val", args.num_images)
    imgs = load_images(files, trained.config["img_size"], norm)
    stats = {}
    for name, model in (("init", init), ("trained", trained)):
        stats[name] = measure_layers(model.eval(), imgs, convention=args.convention)
        stats[name].meta["model"] = f"CRATE-MAE {model_cfg['depth']}+{model_cfg['decoder_depth']} layers, {name}"
        stats[name].save(out, f"layerwise_{name}")

    rows = []
    print(f"\nencoder, {len(files)} cifar10-dev/val images, convention {args.convention}; mean over images")
    print(f"{'layer':>5} | {'R^c(LN Z) init':>14} {'trained':>9} | {'R^c(Z½) init':>12} {'trained':>9} | "
          f"{'||Z||0/Nd init':>14} {'trained':>9} | {'R(Z) init':>9} {'trained':>9}")
    for pi, pt in zip(stats["init"].rows(), stats["trained"].rows()):
        if pi["part"] != "encoder":
            continue
        rows.append({"layer": pi["layer"], **{f"{m}_{w}": r[f"{m}_mean"] for w, r in (("init", pi), ("trained", pt))
                                              for m in ("rc_mssa_in", "rc_z_half", "l0", "rate_out")}})
        r = rows[-1]
        print(f"{r['layer']:>5} | {r['rc_mssa_in_init']:>14.1f} {r['rc_mssa_in_trained']:>9.1f} | "
              f"{r['rc_z_half_init']:>12.1f} {r['rc_z_half_trained']:>9.1f} | {r['l0_init']:>14.3f} "
              f"{r['l0_trained']:>9.3f} | {r['rate_out_init']:>9.1f} {r['rate_out_trained']:>9.1f}")
    result = {"data": str(data / "val"), "num_images": len(files), "convention": args.convention,
              "model": model_cfg, **info, "encoder": rows}
    (out / "layerwise_demo.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}/layerwise_demo.json and layerwise_{{init,trained}}.{{json,csv,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
