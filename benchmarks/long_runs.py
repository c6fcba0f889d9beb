"""Long pretraining runs on cifar10-dev and their full evaluation: CRATE-MAE (several seeds and settings), the paper's
ViT-MAE baseline and facebookresearch/mae's ViT-MAE at equal width and depth, each also scored at its random init.

    # 0. fix the budgets once (times each model's steps, one after another, one thread; writes OUT/budget.json):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_runs.py budget --epochs 100
    # 1. pretrain every run of RUNS (each resumable with the same command; two at a time on 2 cores, or all at
    #    once on a GPU machine with `parallel`, which stops each at --max-minutes with a resumable checkpoint):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_runs.py pretrain crate
    .venv/bin/python benchmarks/long_runs.py parallel --all --workers 2 --max-minutes 7
    # 2. score every run, its random init and its kept epochs; the claims table with spreads and intervals, figures:
    .venv/bin/python benchmarks/long_runs.py evaluate
    .venv/bin/python benchmarks/long_runs.py cls-study          # what the cls token attends to, its norm, its gradient
    .venv/bin/python benchmarks/long_runs.py report             # claims.md, trend.md, the figures
    # 3. fine-tune a pretrained encoder and the same network from scratch (same seed, data order, recipe):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_runs.py finetune --start pretrained --epochs 100 &
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_runs.py finetune --start scratch --epochs 100

Recipe: ``configs/pretrain_cifar.yaml`` (docs/evaluation.md, recipe study and long runs) with online k-NN every 10
epochs, fp32 on every device (``run.amp=off``, so a run started on a GPU resumes on a CPU with the same arithmetic
type). A run is the config plus the changes its :data:`RUNS` entry names (seed, ISTA setting, loss target, warm-up,
masking frame). The ViT-MAEs get CRATE-MAE's width, depth and heads for encoder and decoder, the same data,
normalisation and optimiser, and CRATE-MAE's wall-clock budget on one CPU thread: ``budget`` times real training
steps of each model (as the demo does) and fixes the epochs in ``OUT/budget.json``.

Scoring, on unmasked val images: masked val loss (fixed masks); scikit-learn logistic regression (C chosen on 10 % of
train) on cls and mean-pooled tokens of the final output (and, with ``--layers``, of every encoder layer); BN + LARS
(MAE protocol) on cls; weighted k-NN (best of k in 10, 20, 100, 200) on cls and mean-pooled tokens. Every score
carries a bootstrap 95 % interval over the val images. Rows are cached in ``OUT/rows/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# cifar10-dev: data/cifar10-dev as benchmarks/make_cifar10_dev.py writes it, else the development workspace's copy.
# Relative to the repository root (every command runs there), so the path recorded in a run's config is the same on
# every machine and a run started elsewhere resumes here.
DATA = next(
    (d for d in (Path("data/cifar10-dev"), Path("../shared/data/cifar10-dev")) if d.is_dir()), Path("data/cifar10-dev")
)
CONFIG = REPO / "src" / "crate_mae" / "configs" / "pretrain_cifar.yaml"
FT_CONFIG = REPO / "src" / "crate_mae" / "configs" / "finetune_cifar.yaml"
OUT = Path("runs/long")
BASES = {"crate": "CRATE-MAE", "vit_paper": "ViT-MAE (paper's baseline)", "vit_mae": "ViT-MAE (facebookresearch)"}
TREND = (10, 25, 50)  # epochs kept besides the last, for the budget trend


@dataclass(frozen=True)
class Run:
    """One pretraining run: a base model of the CIFAR config plus the changes that define it."""

    title: str
    base: str = "crate"
    model: dict = field(default_factory=dict)  # constructor overrides on top of the base
    optim: dict = field(default_factory=dict)  # optimiser overrides (e.g. a longer warm-up)
    seed: int = 0
    keep_epochs: tuple[int, ...] = ()

    @property
    def init_key(self) -> str:
        """Runs whose random inits compute the same features share one init row: the seed and the ISTA setting
        decide them; the loss target, the schedule and the masking frame do not change an unmasked forward."""
        key = f"{self.base}_seed{self.seed}"
        if self.base == "crate":
            ista = yaml.safe_load(CONFIG.read_text())["model"]["overrides"] | self.model
            key += f"_ista{ista['ista_step_size']}_{ista['ista_lambda']}"
        return key


# The runs of the second pass were made when configs/pretrain_cifar.yaml held the book's ISTA setting; each names
# its setting, so they mean the same whatever the config holds now (the official code's default since).
BOOK_ISTA = {"ista_step_size": 1.0, "ista_lambda": 0.1}  # the authors' book's CRATE-MAE setting
OFFICIAL_ISTA = {"ista_step_size": 0.1, "ista_lambda": 0.5}  # the official code's default, the config's now
FIRST_ISTA = {"ista_step_size": 0.1, "ista_lambda": 5.0}  # the official repository's first commit
RUNS = {
    "crate": Run("CRATE-MAE, ISTA (1.0, 0.1)", model=BOOK_ISTA, keep_epochs=TREND),
    "crate_s1": Run("CRATE-MAE, ISTA (1.0, 0.1), seed 1", model=BOOK_ISTA, seed=1, keep_epochs=TREND),
    "crate_s2": Run("CRATE-MAE, ISTA (1.0, 0.1), seed 2", model=BOOK_ISTA, seed=2, keep_epochs=TREND),
    "crate_ista_official": Run("CRATE-MAE, ISTA (0.1, 0.5)", model=OFFICIAL_ISTA, keep_epochs=TREND),
    "crate_ista_official_s1": Run("CRATE-MAE, ISTA (0.1, 0.5), seed 1", model=OFFICIAL_ISTA, seed=1),
    "crate_ista_official_s2": Run("CRATE-MAE, ISTA (0.1, 0.5), seed 2", model=OFFICIAL_ISTA, seed=2),
    "crate_ista_first": Run("CRATE-MAE, ISTA (0.1, 5.0)", model=FIRST_ISTA),
    "crate_normpix": Run("CRATE-MAE, ISTA (1.0, 0.1), norm_pix_loss", model={**BOOK_ISTA, "norm_pix_loss": True}),
    "crate_warmup20": Run(
        "CRATE-MAE, ISTA (1.0, 0.1), 20 warm-up epochs", model=BOOK_ISTA, optim={"warmup_epochs": 20}
    ),
    "crate_visible": Run(
        "CRATE-MAE, ISTA (1.0, 0.1), visible-only encoder (not the paper's frame)",
        model={**BOOK_ISTA, "mask_tokens_in_encoder": False},
    ),
    "vit_paper": Run(BASES["vit_paper"], base="vit_paper"),
    "vit_mae": Run(BASES["vit_mae"], base="vit_mae"),
}


def base_spec(base: str) -> tuple[str, dict]:
    """Registry name and constructor overrides: the CIFAR config's CRATE-MAE, or a ViT-MAE of its width/depth."""
    raw = yaml.safe_load(CONFIG.read_text())
    over = dict(raw["model"]["overrides"])
    if base == "crate":
        return raw["model"]["name"], over
    d, heads = over["embed_dim"], over["num_heads"]
    vit = dict(
        patch_size=over["patch_size"],
        embed_dim=d,
        depth=over["depth"],
        num_heads=heads,
        decoder_embed_dim=d,
        decoder_depth=over["decoder_depth"],
        decoder_num_heads=heads,
        norm_pix_loss=over.get("norm_pix_loss", False),
    )
    return ("vit_mae_base_paper", vit) if base == "vit_paper" else ("vit_mae_base", vit)


def run_spec(name: str) -> tuple[str, dict]:
    run = RUNS[name]
    model, over = base_spec(run.base)
    return model, {**over, **run.model}


def data_stats() -> tuple[list[float], list[float]]:
    d = yaml.safe_load(CONFIG.read_text())["data"]
    return d["mean"], d["std"]


def read_budget(args) -> dict:
    path = args.out / "budget.json"
    if not path.is_file():
        raise SystemExit(f"no {path}: run `long_runs.py budget` first (it fixes every run's epochs)")
    return json.loads(path.read_text())


def pretrain_config(name: str, args, workers: int | str = 0, **run_keys):
    from crate_mae.training import load_config

    run = RUNS[name]
    model, over = run_spec(name)
    return load_config(
        CONFIG,
        {
            "model.name": model,
            "model.overrides": over,
            "data.path": str(args.data),
            "data.split": "train",
            "data.kind": "imagefolder",
            "data.num_workers": workers,
            "run.output_dir": str(args.out / name),
            "run.vis_every_epochs": 0,
            "run.resume": "auto",
            "run.progress": False,
            "run.amp": "off",
            "run.seed": run.seed,
            "run.keep_epochs": list(run.keep_epochs),
            "run.keep_checkpoints": 1,
            "run.knn_every_epochs": args.knn_every,
            "run.knn_data": str(args.data),
            **run_keys,
        },
    )


def budget(args) -> int:
    """Time real training steps of every base model one after another, under the same conditions, and fix the
    epochs: CRATE-MAE ``--epochs``, each ViT-MAE as many as fit in CRATE-MAE's minutes (``OUT/budget.json``)."""
    from crate_mae.demo import epochs_for_budget

    per_epoch = {b: 1000.0 / epochs_for_budget(pretrain_config(b, args), 1000.0, 10_000)[0] for b in BASES}
    minutes = args.epochs * per_epoch["crate"]
    out = {"minutes": round(minutes, 1), "epochs": {}, "minutes_per_epoch": {}}
    for base, mpe in per_epoch.items():
        out["epochs"][base] = args.epochs if base == "crate" else max(1, int(minutes / mpe))
        out["minutes_per_epoch"][base] = round(mpe, 3)
        print(f"{BASES[base]}: {mpe:.2f} min/epoch -> {out['epochs'][base]} epochs in {minutes:.0f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budget.json").write_text(json.dumps(out, indent=2))
    return 0


def pretrain(args) -> int:
    from crate_mae.training import pretrain as run_pretraining

    run = RUNS[args.run]
    epochs = read_budget(args)["epochs"][run.base]
    keys = {"run.max_minutes": args.max_minutes} if args.max_minutes else {}
    cfg = pretrain_config(args.run, args, workers=args.workers, **keys)
    cfg.optim.epochs = epochs
    cfg.optim.warmup_epochs = run.optim.get("warmup_epochs", max(1, round(epochs / 20)))
    cfg.validate()
    summary = run_pretraining(cfg)
    (args.out / args.run / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"{run.title}: {summary['steps']} steps, {summary['epochs']} of {epochs} epochs ({summary['stopped']}), "
        f"{summary['elapsed_s']:.0f} s"
    )
    return 0


def parallel(args) -> int:
    """Every named run as its own process (one compute thread, ``--workers`` loader processes), all at once: the
    way to fill a GPU machine with small runs. Each stops at ``--max-minutes`` with a checkpoint it resumes from."""
    names = list(RUNS) if args.all else args.runs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args.out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "pretrain",
            name,
            "--data",
            str(args.data),
            "--out",
            str(args.out),
            "--workers",
            str(args.workers),
            "--knn-every",
            str(args.knn_every),
        ]
        if args.max_minutes:
            cmd += ["--max-minutes", str(args.max_minutes)]
        log = open(args.out / f"{name}.log", "a")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    failed = [n for n, p in procs.items() if p.wait() != 0]
    for name in names:
        s = args.out / name / "summary.json"
        state = json.loads(s.read_text()) if s.is_file() else {}
        print(f"{name}: {state.get('epochs', '?')} epochs, {state.get('stopped', 'no summary')}")
    if failed:
        print(f"failed: {', '.join(failed)} (see {args.out}/<run>.log)")
    return 1 if failed else 0


def pack(args) -> int:
    """Tar what evaluation needs (models, kept epochs, metrics, logs; the newest checkpoint of unfinished runs) into
    ``--dest``, in files of at most ``--part-mb`` MiB, at most ``--parts`` files: what a GPU machine sends back."""
    out, dest = args.out, Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    items: list[Path] = [p for p in (out / "budget.json", *out.glob("*.log")) if p.is_file()]
    for run in [out / name for name in RUNS] + sorted(out.glob("finetune_*")):
        if not run.is_dir():
            continue
        items += [
            p
            for p in (run / "metrics.jsonl", run / "config.yaml", run / "summary.json", run / "result.json")
            if p.is_file()
        ]
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        items += sorted((run / "epochs").glob("*/*"))
        if summary.get("stopped") == "completed":
            items += sorted((run / "model").glob("*"))
        else:
            ckpts = sorted((run / "checkpoints").glob("step_*"))
            items += sorted(ckpts[-1].glob("*")) if ckpts else []
    limit, parts, part, size = args.part_mb * 2**20, [], [], 0
    for p in items:
        n = p.stat().st_size
        if part and size + n > limit:
            parts.append(part)
            part, size = [], 0
        part.append(p)
        size += n
    parts.append(part)
    if len(parts) > args.parts:
        print(
            f"warning: {len(parts)} parts needed, keeping the first {args.parts}; left out: "
            + ", ".join(str(p) for q in parts[args.parts :] for p in q)
        )
    for i, part in enumerate(parts[: args.parts]):
        with tarfile.open(dest / f"long_runs_{i}.tar", "w") as tar:
            for p in part:
                tar.add(p)
    print(f"{sum(len(p) for p in parts[: args.parts])} files in {min(len(parts), args.parts)} tar files in {dest}")
    return 0


# -- scoring ----------------------------------------------------------------------------------------------------------
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
            total += model(
                imgs, mask_ratio=mask_ratio, noise=torch.rand(len(imgs), h * w, generator=gen)
            ).loss.item() * len(imgs)
    return total / len(ds)


def score(label: str, model, args, layers: bool) -> dict:
    """The probes of the module docstring on one model; returns the table row."""
    from crate_mae.evaluation import compute_features, knn, linprobe

    mean, std = data_stats()
    depth = len(model.encoder.blocks if model.white_box else model.blocks)
    feats = {
        s: compute_features(
            model,
            args.data,
            s,
            layers=list(range(depth)) if layers else None,
            batch_size=250,
            num_workers=0,
            progress=False,
            mean=mean,
            std=std,
            img_size=32,
            fingerprint=label,
        )
        for s in ("train", "val")
    }
    tr, va = feats["train"], feats["val"]
    res = {
        "logreg": linprobe(tr, va, "sklearn"),
        "lars": linprobe(tr, va, "mae"),
        "knn": knn(tr, va),
        "mean_logreg": linprobe(tr, va, "sklearn", pool="mean"),
        "mean_knn": knn(tr, va, pool="mean"),
    }
    if layers:
        for i in range(depth):
            for pool in ("cls", "mean"):
                res[f"layer{i + 1}_{pool}"] = linprobe(tr, va, "sklearn", pool=pool, layer=i)
    row = {k: round(r["metrics"]["top1"], 2) for k, r in res.items()}
    row["ci95"] = {k: [round(x, 2) for x in r["details"]["top1_ci95"]] for k, r in res.items()}
    row.update(
        label=label,
        params=sum(p.numel() for p in model.parameters()),
        depth=depth,
        val_loss=round(masked_val_loss(model, args.data, mean, std), 4),
        knn_k=res["knn"]["details"]["best_k"],
    )
    return row


def cached_row(key: str, label: str, args, build, layers: bool) -> dict:
    """A table row computed once (``OUT/rows/<key>.json``), so ``evaluate`` resumes where it stopped."""
    path = args.out / "rows" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"scoring {label} ...", flush=True)
    t = time.perf_counter()
    row = score(label, build().eval(), args, layers)
    row["scoring_s"] = round(time.perf_counter() - t)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    return row


def init_model(name: str):
    import crate_mae

    model, over = run_spec(name)
    torch.manual_seed(RUNS[name].seed)  # pretraining seeds the initialisation with run.seed
    return crate_mae.create_model(model, img_size=32, **over)


def finished(args, name: str) -> bool:
    s = args.out / name / "summary.json"
    return s.is_file() and json.loads(s.read_text()).get("stopped") == "completed"


def evaluate(args) -> int:
    """Score every finished run (``--runs`` to choose), its random init (one row per init key) and its kept epochs.
    Per-layer probes (``--layers``) for the final models of seed 0 and their inits."""
    import crate_mae

    names = args.runs or list(RUNS)
    for name in names:
        run = RUNS[name]
        layers = run.seed == 0
        cached_row(
            f"init_{run.init_key}",
            f"{BASES[run.base]} random init ({run.init_key})",
            args,
            lambda n=name: init_model(n),
            layers,
        )
        if not finished(args, name):
            print(f"skipping {name}: not finished (pretrain it first)")
            continue
        cached_row(
            name,
            f"{run.title} pretrained",
            args,
            lambda n=name: crate_mae.from_pretrained(args.out / n / "model"),
            layers,
        )
        for epoch in run.keep_epochs:
            path = args.out / name / "epochs" / f"epoch_{epoch:04d}"
            if path.is_dir():
                cached_row(
                    f"{name}_epoch{epoch}",
                    f"{run.title} at epoch {epoch}",
                    args,
                    lambda p=path: crate_mae.from_pretrained(p),
                    False,
                )
    return 0


# -- the cls token ----------------------------------------------------------------------------------------------------
def cls_study(args) -> int:
    """Why the cls probe stalls: per encoder layer, on 512 val images with the pretraining masking,

    - cls attention: the attention mass the cls query puts on itself and the entropy of its attention (per head,
      averaged), against a patch query's;
    - token norms: ||z_cls|| and the mean ||z_patch|| at each layer's output;
    - gradient share: ||dL/dz_cls|| / ||dL/dZ|| at each layer's output, for the masked-patch loss (how much of the
      training signal reaches the cls token at all).
    """
    from torch.utils.data import DataLoader, Subset

    import crate_mae
    from crate_mae.data import build_dataset, eval_transform

    mean, std = data_stats()
    val = build_dataset(args.data, split="val", transform=eval_transform(32, 1.0, mean, std))
    imgs = next(
        iter(DataLoader(Subset(val, torch.linspace(0, len(val) - 1, 512).round().long().tolist()), batch_size=512))
    )[0]
    results = {}
    for name in args.runs or [n for n in RUNS if RUNS[n].base == "crate"]:
        models = {"init": init_model(name)}
        if finished(args, name):
            models["trained"] = crate_mae.from_pretrained(args.out / name / "model")
        for when, model in models.items():
            results[f"{name}/{when}"] = cls_measures(model.eval(), imgs)
            print(name, when, json.dumps(results[f"{name}/{when}"]["summary"]))
    (args.out / "cls_study.json").write_text(json.dumps(results, indent=2))
    return 0


def cls_measures(model, imgs: torch.Tensor) -> dict:
    """The measures of :func:`cls_study` for one model (a CrateMAE), per encoder layer."""
    enc = model.encoder
    h, w = model.grid_size(imgs)
    noise = torch.rand(len(imgs), h * w, generator=torch.Generator().manual_seed(0))
    ins, outs = [], []

    def keep_output(module, args, output):  # returns None: a hook's return value would replace the output
        output.retain_grad()
        outs.append(output)

    hooks = [blk.register_forward_pre_hook(lambda m, a: ins.append(a[0].detach())) for blk in enc.blocks]
    hooks += [blk.register_forward_hook(keep_output) for blk in enc.blocks]
    try:
        out = model(imgs, mask_ratio=0.75, noise=noise)  # the pretraining forward: masked, as the loss sees it
        out.loss.backward()
    finally:
        for hk in hooks:
            hk.remove()
    masked = out.mask.bool()
    layers = []
    with torch.no_grad():
        x = enc.prepare_tokens(imgs)  # unmasked, as the probes see it
        for i, blk in enumerate(enc.blocks):
            attn = blk.attn.attention(blk.norm1(x))  # (N, heads, T, T)
            ent = -(attn * attn.clamp_min(1e-12).log()).sum(-1)
            g = outs[i].grad
            row = {
                "cls_self_attention": attn[:, :, 0, 0].mean().item(),
                "patch_to_cls_attention": attn[:, :, 1:, 0].mean().item(),
                "cls_attention_entropy": ent[:, :, 0].mean().item(),
                "patch_attention_entropy": ent[:, :, 1:].mean().item(),
                "cls_norm": 0.0,
                "patch_norm": 0.0,
                "cls_grad_share": (g[:, 0].norm() / g.norm()).item(),
                "cls_grad_share_uniform": 1 / g.shape[1] ** 0.5,
            }
            if model.mask_tokens_in_encoder:  # where the cls query looks during training: visible or mask tokens
                a = blk.attn.attention(blk.norm1(ins[i]))[:, :, 0, 1:].mean(1)  # (N, L) over heads
                row["train_cls_to_masked"] = (a * masked).sum(1).mean().item()
                row["train_cls_to_visible"] = (a * ~masked).sum(1).mean().item()
            x = blk(x)
            row["cls_norm"] = x[:, 0].norm(dim=-1).mean().item()
            row["patch_norm"] = x[:, 1:].norm(dim=-1).mean().item()
            layers.append(row)
    model.zero_grad(set_to_none=True)
    summary = {k: [round(layer[k], 4) for layer in layers] for k in layers[0]}
    return {"layers": layers, "summary": summary}


# -- fine-tuning ------------------------------------------------------------------------------------------------------
def finetune(args) -> int:
    """Fine-tune the pretrained encoder of ``--source`` and the same architecture from scratch, same recipe, seed and
    data order (``--start`` runs one of them, so the two can run side by side); ``finetune.json`` collects them."""
    from crate_mae.evaluation.finetune import finetune as run_finetune
    from crate_mae.evaluation.finetune_config import load_finetune_config

    run = RUNS[args.source]
    model, over = run_spec(args.source)
    if run.base != "crate" and args.start != "pretrained":
        raise SystemExit("from scratch needs a registered classifier: only the crate runs have one (crate_*)")
    enc_over = {
        k: over[k]
        for k in ("patch_size", "embed_dim", "depth", "num_heads", "ista_step_size", "ista_lambda")
        if k in over
    }
    mean, std = data_stats()  # scratch has no checkpoint to read them from
    starts = {
        "pretrained": {"model.checkpoint": str(args.out / args.source / "model")},
        "scratch": {
            "model.checkpoint": None,
            "model.name": model.replace("crate_mae_", "crate_"),
            "model.overrides": enc_over,
            "data.img_size": 32,
            "data.mean": mean,
            "data.std": std,
        },
    }
    for label in [args.start] if args.start != "both" else list(starts):
        cfg = load_finetune_config(
            FT_CONFIG,
            {
                **starts[label],
                "data.path": str(args.data),
                "data.num_workers": args.workers,
                "optim.epochs": args.epochs,
                "optim.warmup_epochs": max(1, args.epochs // 20),
                "run.output_dir": str(args.out / f"finetune_{args.source}_{label}"),
                "run.resume": "auto",
                "run.progress": False,
                "run.seed": run.seed,
                "run.amp": "off",
                "run.max_minutes": args.max_minutes,
            },
        )
        r = run_finetune(cfg)
        result = {"epochs": args.epochs, **{k: round(v, 2) for k, v in r["metrics"].items()}}
        (args.out / f"finetune_{args.source}_{label}.json").write_text(json.dumps(result, indent=2))
        print(label, result)
    return 0


# -- report -----------------------------------------------------------------------------------------------------------
def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


COLUMNS = [
    ("val_loss", "masked val loss"),
    ("logreg", "cls logreg"),
    ("mean_logreg", "mean logreg"),
    ("lars", "cls BN+LARS"),
    ("knn", "cls k-NN"),
    ("mean_knn", "mean k-NN"),
]


def seed_groups() -> dict[str, list[str]]:
    """Runs that differ only in their seed, under the name of the seed-0 run (``crate``: crate, crate_s1, crate_s2)."""
    groups: dict[str, list[str]] = {}
    for name in RUNS:
        groups.setdefault(name.removesuffix("_s1").removesuffix("_s2"), []).append(name)
    return groups


def rows_of(args) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((args.out / "rows").glob("*.json"))}


def cell(rows: list[dict], key: str) -> str:
    """mean ± std over seeds, or a single value with its bootstrap 95 % interval over val images."""
    vals = [r[key] for r in rows]
    if len(vals) > 1:
        m, s = mean_std(vals)
        return f"{m:.2f} ± {s:.2f}" if key != "val_loss" else f"{m:.3f} ± {s:.3f}"
    ci = rows[0].get("ci95", {}).get(key)
    return (
        f"{vals[0]:.2f} [{ci[0]:.1f}, {ci[1]:.1f}]"
        if ci
        else (f"{vals[0]:.3f}" if key == "val_loss" else f"{vals[0]:.2f}")
    )


def verdict(diffs: list[float], threshold: float, ci: tuple[float, float] | None = None) -> str:
    """``held`` when the gain's interval lies above ``threshold``, ``not held`` when below, else ``within noise``.
    With several seeds the interval is mean ± 2 sd of the paired gains; with one run, ``ci`` (bootstrap)."""
    if len(diffs) > 1:
        m, s = mean_std(diffs)
        lo, hi = m - 2 * s, m + 2 * s
    else:
        lo, hi = ci if ci is not None else (diffs[0], diffs[0])
    return "held" if lo > threshold else "not held" if hi < threshold else "within noise"


def report(args) -> int:
    """The results table (mean ± std over seeds where there are several), the claims (a) and (b) with their
    verdicts, the ISTA-setting and budget-trend tables, and the figures (``OUT/report.md``, ``OUT/figures``)."""
    rows = rows_of(args)
    lines = ["| run | n | " + " | ".join(h for _, h in COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for group, names in seed_groups().items():
        trained = [rows[n] for n in names if n in rows]
        inits = [rows[k] for k in dict.fromkeys(f"init_{RUNS[n].init_key}" for n in names) if k in rows]
        for rs, what in ((trained, "pretrained"), (inits, "random init")):
            if rs:
                lines.append(
                    f"| {RUNS[group].title} {what} | {len(rs)} | " + " | ".join(cell(rs, k) for k, _ in COLUMNS) + " |"
                )
    text = ["## Results (cifar10-dev val, top-1 %)", "", *lines, ""]
    # claims (a) and (b), per ISTA setting and pool, over the seeds
    text += ["## Claims", "", "| claim | setting | pool | value | interval | verdict |", "|---|---|---|---:|---|---|"]
    for group in ("crate", "crate_ista_official"):
        seeds = [n for n in seed_groups()[group] if n in rows]
        if not seeds:
            continue
        setting = RUNS[group].title.removeprefix("CRATE-MAE, ")
        for key, pool in (("logreg", "cls"), ("mean_logreg", "mean-pool")):
            gains = [rows[n][key] - rows[f"init_{RUNS[n].init_key}"][key] for n in seeds]
            m, s = mean_std(gains)
            text.append(
                f"| (a) gain over init > 10 | {setting} | {pool} | {m:+.2f} | ± {2 * s:.2f} (2 sd, "
                f"{len(gains)} seeds) | {verdict(gains, 10.0)} |"
            )
            if "vit_paper" in rows:
                vit = rows["vit_paper"]
                lo_v, hi_v = vit["ci95"][key]
                cm, cs = mean_std([rows[n][key] for n in seeds])
                gap = vit[key] - cm  # the claim: CRATE-MAE within 3 points of ViT-MAE, i.e. gap < 3
                half = (((hi_v - lo_v) / 2) ** 2 + (2 * cs) ** 2) ** 0.5
                lo, hi = gap - half, gap + half
                v = "held" if hi < 3 else "not held" if lo > 3 else "within noise"
                text.append(
                    f"| (b) ViT-MAE minus CRATE-MAE < 3 | {setting} | {pool} | {gap:+.2f} | "
                    f"[{lo:+.2f}, {hi:+.2f}] | {v} |"
                )
    text.append("")
    ft = finetune_comparison(args)
    if ft:
        text += ["## Fine-tuning, pretrained against scratch (claim d)", "", ft, ""]
    trend = trend_table(args, rows)
    if trend:
        text += ["## Budget trend (gain over init, logreg top-1)", "", trend, ""]
    (args.out / "report.md").write_text("\n".join(text))
    print("\n".join(text))
    figures(args, rows)
    return 0


def finetune_comparison(args) -> str:
    """Final val top-1 of each pair of fine-tunes (``finetune_RUN_pretrained`` / ``_scratch``), recomputed from their
    last checkpoints, with a paired bootstrap 95 % interval of the difference over the val images (both models see
    the same images, so the interval is that of the gain, not of either score)."""
    from torch.utils.data import DataLoader

    import crate_mae
    from crate_mae.data import build_dataset, eval_transform

    mean, std = data_stats()
    val = build_dataset(args.data, split="val", transform=eval_transform(32, 1.0, mean, std))
    lines = []
    for pre in sorted(args.out.glob("finetune_*_pretrained")):
        scratch = pre.with_name(pre.name.replace("_pretrained", "_scratch"))
        if not (pre / "result.json").is_file() or not (scratch / "result.json").is_file():
            continue
        correct = {}
        for label, run in (("pretrained", pre), ("scratch", scratch)):
            model = crate_mae.load_checkpoint(sorted((run / "checkpoints").glob("step_*"))[-1]).eval()
            with torch.no_grad():
                correct[label] = torch.cat([(model(x).argmax(1) == y) for x, y in DataLoader(val, batch_size=500)])
        diff = correct["pretrained"].double() - correct["scratch"].double()
        idx = torch.randint(0, len(diff), (2000, len(diff)), generator=torch.Generator().manual_seed(0))
        lo, hi = torch.quantile(100 * diff[idx].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        p, s = (100 * correct[k].double().mean().item() for k in ("pretrained", "scratch"))
        epochs = json.loads((pre / "result.json").read_text())["details"]["epochs"]
        verdict = "held" if lo > 0 else "not held" if hi < 0 else "within noise"
        lines.append(
            f"| {pre.name.removeprefix('finetune_').removesuffix('_pretrained')} | {epochs} | {p:.2f} | "
            f"{s:.2f} | {p - s:+.2f} [{lo:+.2f}, {hi:+.2f}] | {verdict} |"
        )
    if not lines:
        return ""
    return "\n".join(
        [
            "| source | epochs | pretrained top-1 | scratch top-1 | gain [paired 95 % interval] | (d) |",
            "|---|---:|---:|---:|---:|---|",
            *lines,
        ]
    )


def trend_table(args, rows) -> str:
    lines = []
    for name, run in RUNS.items():
        if not run.keep_epochs or name not in rows:
            continue
        init = rows[f"init_{run.init_key}"]
        cells = []
        for epoch in (*run.keep_epochs, "final"):
            r = rows.get(f"{name}_epoch{epoch}") if epoch != "final" else rows[name]
            cells.append(
                f"{r['logreg'] - init['logreg']:+.2f} / {r['mean_logreg'] - init['mean_logreg']:+.2f}" if r else ""
            )
        lines.append(f"| {run.title} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = "| run (cls / mean-pool gain) | " + " | ".join(f"epoch {e}" for e in (*TREND, "100")) + " |"
    return "\n".join([head, "|---|" + "---:|" * (len(TREND) + 1), *lines])


def figures(args, rows) -> None:
    """Layer-wise R^c and non-zeros for each ISTA setting, init against trained (512 val images), and the
    fine-tuning curves when the runs exist."""
    from torch.utils.data import DataLoader, Subset

    import crate_mae
    from crate_mae.analysis.figures import pyplot, save_figure
    from crate_mae.analysis.layerwise import measure_layers
    from crate_mae.data import build_dataset, eval_transform

    out = args.out / "figures"
    mean, std = data_stats()
    val = build_dataset(args.data, split="val", transform=eval_transform(32, 1.0, mean, std))
    subset = Subset(val, torch.linspace(0, len(val) - 1, 512).round().long().tolist())
    plt = pyplot()
    settings = [n for n in ("crate", "crate_ista_official", "crate_ista_first") if finished(args, n)]
    if settings:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        curves = {}
        for color, name in zip(("C0", "C1", "C2"), settings):
            for when, model in (
                ("init", init_model(name)),
                ("trained", crate_mae.from_pretrained(args.out / name / "model")),
            ):
                st = measure_layers(model.eval(), DataLoader(subset, batch_size=64), parts=("encoder",))
                ista = RUNS[name].model or yaml.safe_load(CONFIG.read_text())["model"]["overrides"]
                label = f"η {ista['ista_step_size']}, λ {ista['ista_lambda']} {when}"
                curves[label] = {
                    m: [round(float(x), 4) for x in st.series("encoder", m)[0]]
                    for m in ("rc_mssa_in", "rc_z_half", "l0", "rate_out")
                }
                for ax, metric in zip(axes, ("rc_mssa_in", "l0")):
                    m, s = st.series("encoder", metric)
                    ax.errorbar(
                        range(1, len(m) + 1),
                        m,
                        yerr=s,
                        marker="o",
                        capsize=3,
                        color=color,
                        linestyle="-" if when == "trained" else ":",
                        label=label,
                        markerfacecolor=color if when == "trained" else "white",
                    )
        axes[0].set_title("compression R^c(LN(Z^l) | U^l)", fontsize=9)
        axes[1].set_title("non-zeros ||Z^{l+1}||_0 / (N d)", fontsize=9)
        for ax in axes:
            ax.set_xlabel("encoder layer")
            ax.set_xticks(range(1, len(m) + 1))
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out / "ista_settings_layerwise.png")
        (out / "ista_settings_layerwise.json").write_text(json.dumps(curves, indent=2))
    from crate_mae.analysis.inputs import Normalization
    from crate_mae.analysis.reconstruction import save_reconstructions

    imgs = torch.stack([val[i][0] for i in range(0, len(val), len(val) // 8)][:8])
    for name in ("crate", "crate_ista_official", "vit_paper"):
        if finished(args, name):
            save_reconstructions(
                crate_mae.from_pretrained(args.out / name / "model").eval(),
                imgs,
                Normalization(tuple(mean), tuple(std)),
                out / f"reconstruct_{name}.png",
                seed=0,
            )
    ft = {p.name.removeprefix("finetune_"): p for p in sorted(args.out.glob("finetune_*")) if p.is_dir()}
    if ft:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for label, path in ft.items():
            evals = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
            evals = [r for r in evals if r.get("event") == "val"]
            ax.plot([r["epoch"] for r in evals], [r["top1"] for r in evals], label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 %")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out / "finetune_curves.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    cmds = {
        "budget": budget,
        "pretrain": pretrain,
        "parallel": parallel,
        "pack": pack,
        "evaluate": evaluate,
        "cls-study": cls_study,
        "finetune": finetune,
        "report": report,
    }
    for cmd in cmds:
        s = sub.add_parser(cmd)
        s.add_argument("--data", type=Path, default=DATA)
        s.add_argument("--out", type=Path, default=OUT)
        s.add_argument("--knn-every", type=int, default=10, help="online k-NN probe every N epochs")
        s.add_argument("--workers", type=int, default=0, help="data loader processes per run")
        if cmd == "budget":
            s.add_argument("--epochs", type=int, default=100, help="CRATE-MAE's epochs (sets everyone's minutes)")
        if cmd == "pretrain":
            s.add_argument("run", choices=list(RUNS))
        if cmd in ("pretrain", "parallel", "finetune"):
            s.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
        if cmd == "parallel":
            s.add_argument("runs", nargs="*", metavar="RUN", help=f"any of {', '.join(RUNS)}")
            s.add_argument("--all", action="store_true", help="every run")
        if cmd in ("evaluate", "cls-study"):
            s.add_argument("--runs", nargs="*", choices=list(RUNS), default=None)
        if cmd == "pack":
            s.add_argument("--dest", required=True)
            s.add_argument("--part-mb", type=int, default=15)
            s.add_argument("--parts", type=int, default=7)
        if cmd == "finetune":
            s.add_argument("--source", choices=list(RUNS), default="crate")
            s.add_argument("--epochs", type=int, default=100)
            s.add_argument("--start", choices=("both", "pretrained", "scratch"), default="both")
    args = p.parse_args(argv)
    unknown = [r for r in getattr(args, "runs", None) or [] if r not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
    if cmd_needs_data(args.cmd) and not args.data.is_dir():
        print(
            f"data not found: {args.data} (run from the repository root; build it: python "
            "benchmarks/make_cifar10_dev.py CIFAR10_BATCHES data/cifar10-dev)",
            file=sys.stderr,
        )
        return 2
    t = time.perf_counter()
    rc = cmds[args.cmd](args)
    print(f"{args.cmd}: {time.perf_counter() - t:.0f}s")
    return rc


def cmd_needs_data(cmd: str) -> bool:
    return cmd not in ("pack", "parallel")


if __name__ == "__main__":
    sys.exit(main())
