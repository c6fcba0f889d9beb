"""`crate-mae features | linprobe | knn | eval-suite | recon-loss | mask-sweep | finetune | compare`: what a
pretrained encoder is worth."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import DEFAULT_TRANSFER
from ..engine.config import packaged_configs
from ..evaluation import (
    FeatureSet,
    compare_table,
    compute_features,
    knn,
    linprobe,
    mask_ratio_sweep,
    read_results,
    reconstruction_loss,
    run_suite,
    summary_line,
    write_result,
)
from ..evaluation.features import check_same_classes
from ..evaluation.finetune import finetune
from ..evaluation.finetune_config import load_finetune_config
from ..evaluation.linear import DEFAULT_CS
from ..evaluation.masked_loss import SWEEP_RATIOS, sweep_markdown
from ..evaluation.suite import PAPER_CROP_PCT
from ..io import load_model
from ..models import list_models
from ..utils import atomic_write, parse_key_values
from .model import CKPT_HELP, add_model_args
from .train import add_allow_config_change_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="cache frozen-encoder features (cls + mean-pooled) of a labelled split")
    _source_args(p, required=True)
    p.add_argument("--split", default="train", help="split sub-folder / CIFAR split (default train)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=_features)

    p = sub.add_parser("linprobe", help="linear probe: scikit-learn logistic regression (paper) or BN+LARS (MAE)")
    _feature_pair_args(p)
    p.add_argument(
        "--protocol",
        choices=["sklearn", "mae", "both"],
        default="sklearn",
        help="sklearn: logistic regression with C swept on held-out train (paper); mae: BatchNorm + "
        "Linear trained with LARS (facebookresearch/mae); both: one result file each",
    )
    p.add_argument(
        "--Cs",
        type=float,
        nargs="+",
        default=[0.001, 0.01, 0.1, 1.0, 10.0],
        help="sklearn: inverse regularisation strengths to sweep",
    )
    p.add_argument("--holdout", type=float, default=0.1, help="sklearn: fraction of train used to choose C")
    p.add_argument("--max-iter", type=int, default=1000, help="sklearn: L-BFGS iterations")
    p.add_argument("--epochs", type=int, default=90, help="mae: epochs (default 90)")
    p.add_argument("--batch-size", type=int, default=256, help="mae: batch size")
    p.add_argument("--lr", type=float, help="mae: absolute lr (default 6.4, MAE's; LARS steps are relative)")
    p.add_argument("--blr", type=float, help="mae: base lr, lr = blr * batch / 256 (instead of --lr)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="mae: weight decay")
    p.add_argument("--warmup-epochs", type=float, default=10, help="mae: warm-up epochs")
    p.add_argument("--optimizer", choices=["lars", "sgd"], default="lars", help="mae: optimiser")
    p.set_defaults(func=_linprobe)

    p = sub.add_parser("knn", help="weighted k-NN (cosine, T=0.07) on cached features (DINO)")
    _feature_pair_args(p)
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200], help="neighbour counts")
    p.add_argument("--temperature", type=float, default=0.07)
    p.set_defaults(func=_knn)

    p = sub.add_parser(
        "eval-suite",
        help="the paper's linear-probe transfer table (CIFAR-10/100, Flowers-102, "
        "Pets) plus a probe grid, beside the published numbers",
    )
    add_model_args(
        p,
        required=True,
        seed_help="seed of the random init when --ckpt is a model name, and of the probes' held-out split",
    )
    p.add_argument(
        "--root",
        help="folder holding the data sets in torchvision's layout (cifar-10-batches-py, "
        "cifar-100-python, flowers-102, oxford-iiit-pet) or as ImageFolder trees <name>/",
    )
    p.add_argument(
        "--datasets",
        default=",".join(DEFAULT_TRANSFER),
        help="comma-separated names, each optionally NAME=PATH (a torchvision-layout or ImageFolder "
        "folder of its own); default %(default)s",
    )
    p.add_argument("--out", required=True, help="output folder: suite.json, suite.md, results/, features/")
    p.add_argument("--fit-splits", nargs="+", default=["train"], help="ImageFolder trees: splits fit on")
    p.add_argument("--test-split", default="test", help="ImageFolder trees: split tested on (e.g. val)")
    p.add_argument("--img-size", type=int, help="default: the checkpoint's resolution")
    p.add_argument(
        "--crop-pct",
        type=float,
        default=PAPER_CROP_PCT,
        help="resize to img/crop_pct, centre crop (default 224/256, the paper's view)",
    )
    p.add_argument("--Cs", type=float, nargs="+", default=list(DEFAULT_CS), help="paper protocol: C candidates")
    p.add_argument("--grid-Cs", type=float, nargs="+", default=list(DEFAULT_CS), help="probe grid: C values")
    p.add_argument("--no-grid", action="store_true", help="only the paper protocol (no cls/mean x last/last4 grid)")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of the fit split used to choose C")
    p.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations")
    p.add_argument("--probe-jobs", type=int, help="parallel probe fits (default: the cores this process may use)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--workers", type=int, default=4, help="loader processes")
    p.add_argument("--device", help="cpu / cuda / cuda:1 (default: cuda if available; torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--cache-dir", help="feature cache (default OUT/features)")
    p.add_argument("--label", help="name of our column in suite.md (default: the checkpoint)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping")
    p.add_argument("--limit", type=int, help="N evenly spaced images per split (smoke tests)")
    p.set_defaults(func=_eval_suite)

    for name, helptext in (
        (
            "recon-loss",
            "masked reconstruction loss on a val set with fixed masks, in pixel and "
            "norm-pix units (the paper's Table 1)",
        ),
        (
            "mask-sweep",
            "masked loss (and optionally the probe) at mask ratios 0.25..0.9 (the paper's Table 4, for one checkpoint)",
        ),
    ):
        p = sub.add_parser(name, help=helptext)
        add_model_args(p, required=True)
        p.add_argument("--data", required=True, help="ImageFolder root / CIFAR directory")
        p.add_argument("--split", default="val", help="split scored (default val)")
        p.add_argument("--kind", default="auto", choices=["auto", "imagefolder", "cifar10", "cifar100"])
        if name == "recon-loss":
            p.add_argument("--mask-ratio", type=float, default=0.75)
        else:
            p.add_argument("--ratios", type=float, nargs="+", default=list(SWEEP_RATIOS))
            p.add_argument(
                "--probe",
                action="store_true",
                help="also the paper's probe on the cls token of the masked view (fit on --train-split)",
            )
            p.add_argument("--train-split", default="train")
            p.add_argument("--Cs", type=float, nargs="+", default=list(DEFAULT_CS))
        p.add_argument("--mask-seed", type=int, default=0, help="seed of the fixed masking noise")
        p.add_argument("--img-size", type=int, help="default: the checkpoint's resolution")
        p.add_argument("--crop-pct", type=float, help="eval crop (default 0.875 at >= 96 px, 1.0 below)")
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--device", help="cpu / cuda (default: cuda if available)")
        p.add_argument("--limit", type=int, help="N evenly spaced images per split (smoke tests)")
        p.add_argument("--label", help="row label for `crate-mae compare`")
        p.add_argument("--out", help=f"result JSON (default ./{name.replace('-', '_')}_result.json)")
        p.set_defaults(func=_recon_loss if name == "recon-loss" else _mask_sweep)

    p = sub.add_parser("finetune", help="fine-tune an encoder as a classifier (layer decay, mixup, RandAugment)")
    p.add_argument(
        "--config",
        metavar="FILE|NAME",
        help="YAML config (sections model, data, aug, optim, run): a file, or the name of a config "
        "installed with the package: " + ", ".join(n for n in packaged_configs() if n.startswith("finetune")),
    )
    p.add_argument("--ckpt", help=CKPT_HELP + "; shortcut for model.checkpoint= (model.name= for a model name)")
    p.add_argument("--data", help="shortcut for data.path=")
    p.add_argument("--output-dir", help="shortcut for run.output_dir=")
    p.add_argument("--resume", help="shortcut for run.resume= ('auto' or a checkpoint)")

    add_allow_config_change_arg(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.epochs=50")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("compare", help="put result JSON files side by side as a Markdown table")
    p.add_argument(
        "results",
        nargs="+",
        help="result .json files written by linprobe / knn / finetune / "
        "recon-loss / mask-sweep, or a suite.json (a row per data set)",
    )
    p.add_argument("--metrics", nargs="+", help="columns to show (default: every metric)")
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=_compare)


# -- arguments --------------------------------------------------------------------------------------------------------
def _source_args(p: argparse.ArgumentParser, required: bool) -> None:
    add_model_args(p, required)
    g = p.add_argument_group("feature extraction")
    g.add_argument("--data", required=required, help="ImageFolder root / CIFAR directory")
    g.add_argument("--kind", default="auto", choices=["auto", "imagefolder", "folder", "cifar10", "cifar100"])
    g.add_argument(
        "--layers",
        type=int,
        nargs="*",
        default=None,
        help="also store these encoder layers' block outputs (negative = from the end)",
    )
    g.add_argument("--batch-size-features", dest="feat_batch", type=int, default=128)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--img-size", type=int, help="default: the checkpoint's pretraining size")
    g.add_argument(
        "--crop-pct",
        type=float,
        help="eval crop: resize to img/crop_pct, centre crop (default 0.875 at >= 96 px, 1.0 below)",
    )
    g.add_argument("--mean", type=float, nargs=3, help="default: the checkpoint's pretraining statistics")
    g.add_argument("--std", type=float, nargs=3)
    g.add_argument("--device", help="cpu / cuda / cuda:1 (default: cuda if available)")
    g.add_argument("--limit", type=int, help="use N evenly spaced images per split (smoke tests)")


def _feature_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-features", help="cached train features (crate-mae features)")
    p.add_argument("--val-features", help="cached val features")
    _source_args(p, required=False)
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--cache-dir", help="with --ckpt/--data: save the extracted features here for reuse")
    p.add_argument("--pool", choices=["cls", "mean"], default="cls", help="cls token or mean of patch tokens")
    p.add_argument("--layer", type=int, help="a stored intermediate layer instead of the final output")
    p.add_argument("--label", help="row label for `crate-mae compare`")
    p.add_argument("--out", help="result JSON (default: next to the train features, or ./<command>_result.json)")


def _compute(args, split: str):
    return compute_features(
        args.ckpt,
        args.data,
        split,
        kind=args.kind,
        layers=args.layers,
        batch_size=args.feat_batch,
        num_workers=args.workers,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
        mean=args.mean,
        std=args.std,
        device=args.device,
        seed=args.seed,
        model_overrides=parse_key_values(args.overrides),
        limit=args.limit,
    )


def _feature_pair(args):
    """(train, val) FeatureSets from cached files or extracted from --ckpt/--data (then optionally cached)."""

    if args.train_features or args.val_features:
        if not (args.train_features and args.val_features):
            raise ValueError("give both --train-features and --val-features (or --ckpt and --data instead)")
        train, val = FeatureSet.load(args.train_features), FeatureSet.load(args.val_features)
        if args.ckpt:  # the user says which checkpoint these should be: hold them to it
            _, sha = load_model(args.ckpt, seed=args.seed, **parse_key_values(args.overrides))
            if train.checkpoint_sha256 != sha:
                raise ValueError(
                    f"{args.train_features} was extracted from another checkpoint "
                    f"({train.meta.get('checkpoint')}, sha256 {str(train.checkpoint_sha256)[:12]}) "
                    f"than --ckpt {args.ckpt} (sha256 {sha[:12]})"
                )
        return train, val
    if not (args.ckpt and args.data):
        raise ValueError("give --train-features and --val-features, or --ckpt and --data to extract them")

    train = _compute(args, args.train_split)
    val = _compute(args, args.val_split)
    check_same_classes(train.classes, val.classes, f"train split ({args.train_split})", f"val split ({args.val_split})")
    if args.cache_dir:
        for fs, split in ((train, args.train_split), (val, args.val_split)):
            print(f"cached {fs.save(Path(args.cache_dir) / f'{split}.safetensors')}")
    return train, val


def _result_path(args, name: str) -> Path:
    if args.out:
        return Path(args.out)
    if args.train_features:
        return Path(args.train_features).with_name(f"{name}_result.json")
    if args.cache_dir:
        return Path(args.cache_dir) / f"{name}_result.json"
    return Path(f"{name}_result.json")


def _emit(result: dict, path: Path) -> None:
    write_result(result, path)
    print(summary_line(result))
    print(f"result: {path}")


# -- commands ---------------------------------------------------------------------------------------------------------
def _features(args) -> int:
    fs = _compute(args, args.split)
    path = fs.save(args.out)
    print(
        f"features {args.split}: {len(fs)} images x {fs.cls.shape[1]} dims, {len(fs.classes)} classes"
        + (f", layers {sorted(fs.layers)}" if fs.layers else "")
        + f" -> {path} "
        f"(checkpoint sha256 {fs.checkpoint_sha256[:12]})"
    )
    return 0


def _linprobe(args) -> int:
    train, val = _feature_pair(args)
    protocols = ["sklearn", "mae"] if args.protocol == "both" else [args.protocol]
    for protocol in protocols:
        result = linprobe(
            train,
            val,
            protocol,
            args.pool,
            args.layer,
            Cs=args.Cs,
            holdout=args.holdout,
            max_iter=args.max_iter,
            epochs=args.epochs,
            batch_size=args.batch_size,
            blr=args.blr,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            optimizer=args.optimizer,
            seed=args.seed,
            device=args.device,
            label=args.label,
        )
        path = _result_path(args, "linprobe")
        if len(protocols) > 1:
            path = path.with_name(f"{path.stem}_{protocol}{path.suffix}")
        _emit(result, path)
    return 0


def _knn(args) -> int:
    train, val = _feature_pair(args)
    result = knn(
        train, val, ks=args.k, temperature=args.temperature, pool=args.pool, layer=args.layer, label=args.label
    )
    _emit(result, _result_path(args, "knn"))
    return 0


def _finetune(args) -> int:
    overrides = list(args.overrides)
    ckpt_key = "model.name" if args.ckpt in list_models() else "model.checkpoint"
    for flag, key in (
        (args.ckpt, ckpt_key),
        (args.data, "data.path"),
        (args.output_dir, "run.output_dir"),
        (args.resume, "run.resume"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.allow_config_change:
        overrides.append("run.allow_config_change=true")
    cfg = load_finetune_config(args.config, overrides)
    finetune(cfg)
    print(f"result: {Path(cfg.run.output_dir) / 'result.json'}; best model: {Path(cfg.run.output_dir) / 'best'}")
    return 0


def _eval_suite(args) -> int:
    suite = run_suite(
        args.ckpt,
        args.root,
        args.datasets,
        args.out,
        seed=args.seed,
        overrides=parse_key_values(args.overrides),
        fit_splits=args.fit_splits,
        test_split=args.test_split,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
        Cs=args.Cs,
        grid=not args.no_grid,
        grid_Cs=args.grid_Cs,
        holdout=args.holdout,
        max_iter=args.max_iter,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        cache_dir=args.cache_dir,
        probe_jobs=args.probe_jobs,
        strict=args.strict,
        limit=args.limit,
        label=args.label,
    )
    if suite is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    text = (Path(args.out) / "suite.md").read_text()
    print(text.split("\n## ")[0].rstrip())
    print(f"\nsuite: {Path(args.out) / 'suite.json'}, {Path(args.out) / 'suite.md'}")
    return 0


def _masked_kwargs(args) -> dict:
    return dict(
        kind=args.kind,
        seed=args.seed,
        overrides=parse_key_values(args.overrides),
        mask_seed=args.mask_seed,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        limit=args.limit,
    )


def _recon_loss(args) -> int:
    result = reconstruction_loss(args.ckpt, args.data, args.split, mask_ratio=args.mask_ratio, **_masked_kwargs(args))
    result["config"]["label"] = args.label
    _emit(result, Path(args.out or "recon_loss_result.json"))
    return 0


def _mask_sweep(args) -> int:
    result = mask_ratio_sweep(
        args.ckpt,
        args.data,
        args.split,
        ratios=args.ratios,
        probe=args.probe,
        train_split=args.train_split,
        Cs=args.Cs,
        **_masked_kwargs(args),
    )
    result["config"]["label"] = args.label
    path = Path(args.out or "mask_sweep_result.json")
    write_result(result, path)
    table = sweep_markdown(result)
    atomic_write(path.with_suffix(".md"), lambda tmp: Path(tmp).write_text(table + "\n"))
    print(table)
    print(f"result: {path}, {path.with_suffix('.md')}")
    return 0


def _compare(args) -> int:
    table = compare_table([r for p in args.results for r in read_results(p)], metrics=args.metrics)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0
