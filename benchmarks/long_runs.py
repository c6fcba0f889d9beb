"""Long pretraining runs on cifar10-dev and their full evaluation: CRATE-MAE, the paper's ViT-MAE baseline and
facebookresearch/mae's ViT-MAE at equal width and depth, each also scored at its random initialisation.

    # 1. fix the budgets (times each model's steps, one after another, one thread), then pretrain all three side
    #    by side, one thread each (each resumable with the same command):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_runs.py budget --epochs 100
    for m in crate vit_paper vit_mae; do
        OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_runs.py pretrain $m > runs/long/$m.log 2>&1 & done
    # 2. score every model and its init; write table.md, results/*.json and the figures (rows are cached in
    #    rows/, so `evaluate --part init` can score the random inits while the runs still train):
    .venv/bin/python benchmarks/long_runs.py evaluate
    # 3. fine-tune the pretrained CRATE-MAE encoder and the same network from scratch, same budget:
    .venv/bin/python benchmarks/long_runs.py finetune --epochs 10

Recipe: ``configs/pretrain_cifar.yaml`` (the recipe study's choice, docs/evaluation.md) with online k-NN every
10 epochs (``run.knn_every_epochs``). The ViT-MAEs get CRATE-MAE's width, depth and heads for encoder and decoder,
the same data, normalisation and optimiser, and CRATE-MAE's wall-clock budget: ``budget`` times real training steps
of each model (as the demo does) and fixes the epochs (``budget.json``): CRATE-MAE's budget is its epochs times its
minutes per epoch, and each ViT-MAE gets as many epochs as fit in it. Scoring, on unmasked val
images unless said: masked val loss (fixed masks); scikit-learn logistic regression (C chosen on 10 % of train) on
cls and mean-pooled tokens of the final output and of every encoder layer; BN + LARS (MAE protocol) on cls; weighted
k-NN (best of k in 10, 20, 100, 200) on cls and mean-pooled tokens; for CRATE-MAE the layer-wise R^c and sparsity
curves at init vs trained (figure) and reconstructions of val images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# cifar10-dev: data/cifar10-dev as benchmarks/make_cifar10_dev.py writes it, else the development workspace's copy
DATA = next((d for d in (REPO / "data" / "cifar10-dev", REPO.parent / "shared" / "data" / "cifar10-dev") if d.is_dir()),
            REPO / "data" / "cifar10-dev")
CONFIG = REPO / "src" / "crate_mae" / "configs" / "pretrain_cifar.yaml"
OUT = REPO / "runs" / "long"
MODELS = {"crate": "CRATE-MAE", "vit_paper": "ViT-MAE (paper's baseline)", "vit_mae": "ViT-MAE (facebookresearch)"}


def model_spec(which: str) -> tuple[str, dict]:
    """Registry name and constructor overrides: the CIFAR config's CRATE-MAE, or a ViT-MAE of its width/depth."""
    raw = yaml.safe_load(CONFIG.read_text())
    over = dict(raw["model"]["overrides"])
    if which == "crate":
        return raw["model"]["name"], over
    d, heads = over["embed_dim"], over["num_heads"]
    vit = dict(patch_size=over["patch_size"], embed_dim=d, depth=over["depth"], num_heads=heads, decoder_embed_dim=d,
               decoder_depth=over["decoder_depth"], decoder_num_heads=heads,
               norm_pix_loss=over.get("norm_pix_loss", False))
    return ("vit_mae_base_paper", vit) if which == "vit_paper" else ("vit_mae_base", vit)


def pretrain_config(which: str, args):
    from crate_mae.training import load_config

    name, over = model_spec(which)
    return load_config(CONFIG, {
        "model.name": name, "model.overrides": over, "data.path": str(args.data), "data.split": "train",
        "data.kind": "imagefolder", "data.num_workers": 0, "run.output_dir": str(args.out / which),
        "run.vis_every_epochs": 0, "run.resume": "auto", "run.progress": False,
        "run.knn_every_epochs": args.knn_every, "run.knn_data": str(args.data)})


def budget(args) -> int:
    """Time real training steps of every model one after another, under the same conditions, and fix each run's
    epochs: CRATE-MAE ``--epochs``, each ViT-MAE as many as fit in CRATE-MAE's minutes (``OUT/MODEL/budget.json``)."""
    from crate_mae.demo import epochs_for_budget

    per_epoch = {w: 1000.0 / epochs_for_budget(pretrain_config(w, args), 1000.0, 10_000)[0] for w in MODELS}
    minutes = args.epochs * per_epoch["crate"]
    for which, mpe in per_epoch.items():
        epochs = args.epochs if which == "crate" else max(1, int(minutes / mpe))
        (args.out / which).mkdir(parents=True, exist_ok=True)
        (args.out / which / "budget.json").write_text(json.dumps(
            {"epochs": epochs, "minutes": round(minutes, 1), "minutes_per_epoch": round(mpe, 3)}))
        print(f"{MODELS[which]}: {mpe:.2f} min/epoch -> {epochs} epochs in {minutes:.0f} min")
    return 0


def pretrain(args) -> int:
    from crate_mae.training import pretrain as run_pretraining

    cfg = pretrain_config(args.model, args)
    path = args.out / args.model / "budget.json"
    if not path.is_file():
        raise SystemExit(f"no {path}: run `long_runs.py budget` first (it fixes every run's epochs)")
    b = json.loads(path.read_text())
    cfg.optim.epochs, cfg.optim.warmup_epochs = b["epochs"], max(1, round(b["epochs"] / 20))
    cfg.validate()
    summary = run_pretraining(cfg)
    (args.out / args.model / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"{MODELS[args.model]}: {summary['steps']} steps, {summary['epochs']} of {cfg.optim.epochs} epochs "
          f"({summary['stopped']}); budget {b['minutes']} min")
    return 0


def masked_val_loss(model, data: Path, mean, std, mask_ratio: float = 0.75) -> float:
    from torch.utils.data import DataLoader

    from crate_mae.data import build_dataset, eval_transform

    ds = build_dataset(data, split="val", transform=eval_transform(32, 1.0, mean, std))
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for imgs, _ in DataLoader(ds, batch_size=250):
            h, w = model.grid_size(imgs)
            total += model(imgs, mask_ratio=mask_ratio, noise=torch.rand(len(imgs), h * w, generator=gen)).loss.item() \
                * len(imgs)
    return total / len(ds)


def stem(label: str) -> str:
    return label.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("'", "")


def score(label: str, model, args, mean, std) -> dict:
    """Every probe of the module docstring on one model; returns the table row and writes its result files."""
    from crate_mae.evaluation import compute_features, knn, linprobe, write_result

    depth = len(model.encoder.blocks) if hasattr(model, "encoder") else len(model.blocks)
    feats = {s: compute_features(model, args.data, s, layers=list(range(depth)), batch_size=250, num_workers=0,
                                 progress=False, mean=mean, std=std, img_size=32, fingerprint=label)
             for s in ("train", "val")}
    tr, va = feats["train"], feats["val"]
    res = {"logreg": linprobe(tr, va, "sklearn", label=f"{label} / logreg"),
           "lars": linprobe(tr, va, "mae", label=f"{label} / BN+LARS"),
           "knn": knn(tr, va, label=f"{label} / k-NN"),
           "mean_logreg": linprobe(tr, va, "sklearn", pool="mean", label=f"{label} / mean-pool logreg"),
           "mean_knn": knn(tr, va, pool="mean", label=f"{label} / mean-pool k-NN")}
    for i in range(depth):
        for pool in ("cls", "mean"):
            res[f"layer{i + 1}_{pool}"] = linprobe(tr, va, "sklearn", pool=pool, layer=i,
                                                   label=f"{label} / layer {i + 1} {pool} logreg")
    for key, r in res.items():
        write_result(r, args.out / "results" / f"{stem(label)}_{key}.json")
    row = {k: round(r["metrics"]["top1"], 2) for k, r in res.items()}
    row.update(label=label, params=sum(p.numel() for p in model.parameters()), depth=depth,
               val_loss=round(masked_val_loss(model, args.data, mean, std), 4), knn_k=res["knn"]["details"]["best_k"])
    return row


def cached_row(label: str, args, model, mean, std) -> dict:
    """A table row, computed once: ``OUT/rows/<label>.json`` holds it, so ``evaluate`` resumes and the random-init
    rows can be scored while the pretraining runs still train (``--part init``)."""
    path = args.out / "rows" / f"{stem(label)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    row = score(label, model, args, mean, std)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    return row


def evaluate(args) -> int:
    import crate_mae
    from crate_mae.analysis.inputs import Normalization
    from crate_mae.analysis.layerwise import measure_layers
    from crate_mae.analysis.reconstruction import save_reconstructions
    from crate_mae.data import build_dataset, eval_transform

    raw = yaml.safe_load(CONFIG.read_text())
    mean, std = raw["data"]["mean"], raw["data"]["std"]
    rows, trained, inits = [], {}, {}
    for which, title in MODELS.items():
        run = args.out / which
        name, over = model_spec(which)
        torch.manual_seed(0)  # the pretraining runs start from seed 0 too
        inits[which] = crate_mae.create_model(name, img_size=32, **over).eval()
        if args.part != "init":
            if not (run / "model" / "config.json").is_file():
                print(f"skipping {title}: no {run / 'model'} (pretrain it first)")
            else:
                trained[which] = crate_mae.from_pretrained(run / "model").eval()
                budget = json.loads((run / "budget.json").read_text())
                summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
                row = cached_row(f"{title} pretrained", args, trained[which], mean, std)
                row.update(epochs=summary.get("epochs", budget["epochs"]), minutes=round(budget["minutes"]))
                rows.append(row)
        if args.part != "trained":
            row = cached_row(f"{title} random init", args, inits[which], mean, std)
            rows.append({**row, "epochs": 0, "minutes": 0})
    if args.part == "init":
        return 0
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    (args.out / "table.md").write_text(table)
    print(table)
    val = build_dataset(args.data, split="val", transform=eval_transform(32, 1.0, mean, std))
    imgs = torch.stack([val[i][0] for i in range(0, len(val), len(val) // 8)][:8])
    norm = Normalization(tuple(mean), tuple(std))
    for which, model in trained.items():
        save_reconstructions(model, imgs, norm, args.out / "figures" / f"reconstruct_{which}.png", seed=0)
    if "crate" in trained:
        layer_figure(inits["crate"], trained["crate"], val, measure_layers, args.out / "figures")
    return 0


def layer_figure(init, model, val, measure_layers, out: Path) -> None:
    """R^c(LN Z^l | U^l) and ||Z^{l+1}||_0 / (N d) per encoder layer, init vs trained (512 val images)."""
    from torch.utils.data import DataLoader, Subset

    from crate_mae.analysis.figures import pyplot, save_figure

    subset = Subset(val, torch.linspace(0, len(val) - 1, 512).round().long().tolist())
    stats = {k: measure_layers(m, DataLoader(subset, batch_size=64), parts=("encoder",))
             for k, m in (("init", init), ("trained", model))}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, title in ((axes[0], "rc_mssa_in", "compression R^c(LN(Z^l) | U^l)"),
                              (axes[1], "l0", "non-zeros ||Z^{l+1}||_0 / (N d)")):
        for k, st in stats.items():
            mean, std = st.series("encoder", metric)
            layers = range(1, len(mean) + 1)
            ax.errorbar(layers, mean, yerr=std, marker="o", capsize=3, label=k)
        ax.set_xlabel("encoder layer")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(list(layers))
        ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "layerwise_init_vs_trained.png")
    curves = {k: {m: [round(float(x), 4) for x in st.series("encoder", m)[0]] for m in ("rc_mssa_in", "rc_z_half",
                                                                                     "l0", "rate_out")}
              for k, st in stats.items()}
    (out / "layerwise_init_vs_trained.json").write_text(json.dumps(curves, indent=2))


def markdown(rows: list[dict]) -> str:
    cols = [("params", "params", lambda v: f"{v / 1e6:.2f}M"), ("epochs", "epochs", str), ("minutes", "min", str),
            ("val_loss", "masked val loss", str), ("logreg", "cls logreg", str), ("mean_logreg", "mean logreg", str),
            ("lars", "cls BN+LARS", str), ("knn", "cls k-NN", str), ("mean_knn", "mean k-NN", str)]
    lines = ["| model | " + " | ".join(h for _, h, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(f(r[k]) for k, _, f in cols) + " |")
    depth = max(r["depth"] for r in rows)
    lines += ["", "Logistic regression per encoder layer (cls / mean-pool):", "",
              "| model | " + " | ".join(f"layer {i + 1}" for i in range(depth)) + " |", "|---|" + "---:|" * depth]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(
            f"{r.get(f'layer{i + 1}_cls', '')} / {r.get(f'layer{i + 1}_mean', '')}" for i in range(depth)) + " |")
    return "\n".join(lines) + "\n"


def finetune(args) -> int:
    """Fine-tune the pretrained CRATE-MAE encoder and the same architecture from scratch, same recipe and epochs
    (``--start`` runs one of them, so the two can run side by side); ``finetune.json`` collects both."""
    from crate_mae.evaluation.finetune import finetune as run_finetune
    from crate_mae.evaluation.finetune import load_finetune_config

    name, over = model_spec("crate")
    enc_over = {k: over[k] for k in ("patch_size", "embed_dim", "depth", "num_heads") if k in over}
    data = yaml.safe_load(CONFIG.read_text())["data"]  # scratch has no checkpoint to read them from
    starts = {"pretrained": {"model.checkpoint": str(args.out / "crate" / "model")},
              "scratch": {"model.checkpoint": None, "model.name": name.replace("crate_mae_", "crate_"),
                          "model.overrides": enc_over, "data.img_size": data["img_size"], "data.mean": data["mean"],
                          "data.std": data["std"]}}
    for label in [args.start] if args.start != "both" else list(starts):
        cfg = load_finetune_config(REPO / "src" / "crate_mae" / "configs" / "finetune_cifar.yaml", {
            **starts[label], "data.path": str(args.data), "data.num_workers": 0, "optim.epochs": args.epochs,
            "optim.warmup_epochs": max(1, args.epochs // 10), "run.output_dir": str(args.out / f"finetune_{label}"),
            "run.resume": "auto", "run.progress": False})
        r = run_finetune(cfg)
        result = {"epochs": args.epochs, **{k: round(v, 2) for k, v in r["metrics"].items()}}
        (args.out / f"finetune_{label}.json").write_text(json.dumps(result, indent=2))
        print(label, result)
    done = {k: json.loads((args.out / f"finetune_{k}.json").read_text()) for k in starts
            if (args.out / f"finetune_{k}.json").is_file()}
    (args.out / "finetune.json").write_text(json.dumps(done, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("budget", "pretrain", "evaluate", "finetune"):
        s = sub.add_parser(cmd)
        s.add_argument("--data", type=Path, default=DATA)
        s.add_argument("--out", type=Path, default=OUT)
        s.add_argument("--knn-every", type=int, default=10, help="online k-NN probe every N epochs")
        if cmd == "budget":
            s.add_argument("--epochs", type=int, default=100, help="CRATE-MAE's epochs (sets everyone's minutes)")
        if cmd == "pretrain":
            s.add_argument("model", choices=list(MODELS))
        if cmd == "evaluate":
            s.add_argument("--part", choices=("all", "init", "trained"), default="all",
                           help="init: only the random-init rows (no trained model needed); rows are cached")
        if cmd == "finetune":
            s.add_argument("--epochs", type=int, default=10)
            s.add_argument("--start", choices=("both", "pretrained", "scratch"), default="both")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data not found: {args.data} (build it: python benchmarks/make_cifar10_dev.py CIFAR10_BATCHES "
              "data/cifar10-dev)", file=sys.stderr)
        return 2
    t = time.perf_counter()
    rc = {"budget": budget, "pretrain": pretrain, "evaluate": evaluate, "finetune": finetune}[args.cmd](args)
    print(f"{args.cmd}: {time.perf_counter() - t:.0f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
