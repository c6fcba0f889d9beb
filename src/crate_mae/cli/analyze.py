"""`crate-mae analyze | visualize | report`: look inside a checkpoint (or a randomly initialised preset)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis import attention, pca, reconstruction
from ..analysis.inputs import demo_images, find_images, load_images, model_normalization
from ..analysis.layerwise import measure_layers
from ..analysis.report import write_report
from ..data import resolve_data_config
from ..io import load_model
from ..utils import default_device, parse_key_values
from .model import add_model_args


def _model_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, seed_help="seed of the random masks, and of the random init when --ckpt is a model name")
    p.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when available)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on an unreadable image file (default: skip it with a warning naming it)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="layer-wise compression R^c, coding rate R and sparsity (JSON, CSV, PNG)")
    _model_args(p)
    p.add_argument(
        "--data",
        default=None,
        help="folder of images (searched recursively, e.g. an ImageFolder split); default: embedded photos",
    )
    p.add_argument("--out", required=True, help="output folder for layerwise.{json,csv,png}")
    p.add_argument("--num-images", type=int, default=64, help="images to measure (evenly spaced over the folder)")
    p.add_argument("--mask-ratio", type=float, default=0.0, help="fraction of patches replaced by the mask token")
    p.add_argument(
        "--convention",
        choices=["official", "raw"],
        default="official",
        help="official: per-head l2-normalised tokens, 0.01 for eps^2 (CRATE script); raw: formula as is",
    )
    p.add_argument("--eps", type=float, default=0.1, help="eps of the raw convention")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("visualize", help="reconstruction, attention (+ emergent segmentation) or PCA pictures (PNG)")
    p.add_argument("kind", choices=["reconstruct", "attention", "pca"])
    _model_args(p)
    p.add_argument("--images", nargs="*", default=None, help="image folder(s) or files; default: the embedded photos")
    p.add_argument(
        "--out",
        required=True,
        help="output folder; writes KIND.png (attention: also segmentation.png, the union of the heads' masks)",
    )
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="resize+centre-crop to this size (default: the model's); 0 keeps each photo's size, cropped "
        "to a multiple of the patch size (the sin-cos position table is recomputed for the grid)",
    )
    p.add_argument("--mask-ratio", type=float, default=0.75, help="reconstruct: fraction of patches masked")
    p.add_argument(
        "--layer",
        type=int,
        default=-1,
        help="attention / pca: encoder layer (0-based, -1 = last; the official attention script's default "
        "is 10 of 12, i.e. -2)",
    )
    p.add_argument("--threshold", type=float, default=0.6, help="attention: attention mass kept by the masks")
    p.add_argument(
        "--features",
        choices=["mssa", "output"],
        default="mssa",
        help="pca: U^T LN(Z) of the layer (mssa) or the layer output",
    )
    p.add_argument("--fg-threshold", type=float, default=0.5, help="pca: threshold on the normalised 1st component")
    p.add_argument("--no-foreground", action="store_true", help="pca: skip stage 1, use every patch")
    p.add_argument(
        "--pca-style",
        choices=["two_stage", "official"],
        default="two_stage",
        help="pca: our two-stage PCA, or the CRATE authors' display (4 components, 2-4 as RGB, per-image min-max)",
    )
    p.set_defaults(func=_visualize)

    p = sub.add_parser(
        "report", help="one self-contained HTML page: model card, curves, reconstructions, attention, PCA"
    )
    _model_args(p)
    p.add_argument("--images", nargs="*", default=None, help="image folder(s) or files; default: embedded photos")
    p.add_argument("--out", default="report", help="output folder (index.html + layerwise tables)")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--convention", choices=["official", "raw"], default="official")
    p.set_defaults(func=_report)


def _load(args):
    return load_model(
        args.ckpt, seed=args.seed, device=args.device or default_device(), **parse_key_values(args.overrides)
    )[0]


def _images(args, model, sources, img_size=None, keep_size=False):
    norm = model_normalization(model)
    size = img_size or resolve_data_config(model)["img_size"]
    if sources is None:
        if keep_size:
            raise ValueError("--img-size 0 needs --images (the embedded photos come at the model's size)")
        return demo_images(size, args.num_images, norm), norm
    files = find_images(sources, args.num_images)
    return load_images(files, None if keep_size else size, norm, model.patch_size, strict=args.strict), norm


def _analyze(args) -> int:
    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    model = _load(args)
    imgs, _ = _images(args, model, args.data)
    stats = measure_layers(
        model,
        imgs,
        mask_ratio=args.mask_ratio,
        convention=args.convention,
        eps=args.eps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    stats.meta["checkpoint"] = args.ckpt
    stats.meta["data"] = args.data or "embedded photos"
    paths = stats.save(args.out)
    print(stats.format_table())
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def _visualize(args) -> int:
    model = _load(args)
    keep = args.img_size == 0
    imgs, norm = _images(args, model, args.images, args.img_size or None, keep)
    imgs = imgs.to(next(model.parameters()).device)
    path = Path(args.out) / f"{args.kind}.png"
    if args.kind == "reconstruct":
        reconstruction.save_reconstructions(model, imgs, norm, path, args.mask_ratio, args.seed)
    elif args.kind == "attention":
        attention.save_attention(model, imgs, norm, path, args.layer, args.threshold)
        print(
            attention.save_segmentation(
                model, imgs, norm, path.with_name("segmentation.png"), args.layer, args.threshold
            )
        )
    else:
        pca.save_pca(
            model,
            imgs,
            norm,
            path,
            args.layer,
            args.features,
            args.fg_threshold,
            not args.no_foreground,
            args.pca_style,
        )
    print(path)
    return 0


def _report(args) -> int:
    model = _load(args)
    path = write_report(
        model,
        args.out,
        images=args.images,
        num_images=args.num_images,
        mask_ratio=args.mask_ratio,
        seed=args.seed,
        convention=args.convention,
        strict=args.strict,
    )
    print(path)
    return 0
