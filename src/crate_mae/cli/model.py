"""`crate-mae models | info | convert`: the model zoo and checkpoint conversion."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..io import (
    OFFICIAL_SOURCES,
    detect_format,
    load_checkpoint,
    load_model,
    read_state_dict,
    save_for_hub,
    save_pretrained,
)
from ..models import Capabilities, list_models
from ..utils import file_sha256, parse_key_values

CKPT_HELP = (
    "a run directory (its model/), a checkpoint (our folder or model.safetensors, an official CRATE-MAE, "
    "supervised CRATE or MAE .pth or .safetensors), hf-hub:ORG/NAME from the local cache, or a registered "
    "model name (random init)"
)
OVERRIDES_HELP = "constructor overrides, e.g. img_size=32 patch_size=8 (presets) or num_heads=12 (official files)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered model names")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'crate_mae_*'")
    p.set_defaults(func=_models)

    p = sub.add_parser("info", help="architecture and parameter counts of a model name or checkpoint")
    p.add_argument("ckpt", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    p.add_argument("--forward", action="store_true", help="also run one masked forward pass on random images")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "convert", help="convert an official CRATE-MAE / supervised CRATE / MAE checkpoint to our safetensors format"
    )
    p.add_argument("src", help="official .pth / .safetensors file")
    p.add_argument("out_dir", help="output directory (config.json + model.safetensors)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="settings not stored in official weights, e.g. num_heads=12 ista_lambda=0.5",
    )
    hub = p.add_argument_group("ready-to-upload folder (Hugging Face Hub)")
    hub.add_argument(
        "--model-card",
        action="store_true",
        help="also write README.md, a model card naming the source and licence of the weights, so that "
        "OUT_DIR can be uploaded as it is (`hf upload ORG/NAME OUT_DIR`)",
    )
    hub.add_argument("--repo-id", default=None, metavar="ORG/NAME", help="the Hub repository named in the card")
    hub.add_argument(
        "--source",
        default=None,
        help="where the weights come from (default for official CRATE-MAE / "
        "supervised CRATE / MAE weights: their GitHub repository)",
    )
    hub.add_argument(
        "--license",
        default=None,
        help="Hub licence id of the weights (default for official weights: "
        "mit for CRATE, cc-by-nc-4.0 for facebookresearch/mae)",
    )
    hub.add_argument(
        "--data",
        default=None,
        help="what the weights were trained on, e.g. 'ImageNet-1K' (official weight files do not record it)",
    )
    p.set_defaults(func=_convert)


def add_model_args(
    p: argparse.ArgumentParser,
    required: bool = True,
    seed_help: str = "seed of the random init when --ckpt is a model name",
) -> None:
    """The words every command uses to name a model: --ckpt, --seed, positional KEY=VALUE constructor overrides."""
    p.add_argument("--ckpt", required=required, help=CKPT_HELP)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def describe(model: Capabilities) -> dict:
    info = model.config.to_dict()
    if model.model_name is not None:  # as config.json has it
        info["model"] = model.model_name
    info["params_trainable"] = model.num_params("trainable")
    try:
        info["params_official"] = model.num_params("official")
    except ValueError:  # no official count for this architecture
        pass
    return info


def _models(args) -> int:
    for name in list_models(args.pattern):
        print(name)
    return 0


def _info(args) -> int:
    model = load_model(args.ckpt, **parse_key_values(args.overrides))[0]
    info = describe(model)
    if args.forward:
        c = model.config
        size = c.img_size if isinstance(c.img_size, tuple) else (c.img_size, c.img_size)
        imgs = torch.randn(2, c.in_chans, *size)
        with torch.no_grad():
            out = model(imgs) if model.has_decoder else model.forward_features(imgs)
        if model.has_decoder:
            info["forward"] = dict(
                loss=round(float(out.loss), 4),
                pred=list(out.pred.shape),
                masked=int(out.mask[0].sum()),
                latent=list(out.latent.shape),
            )
        else:
            info["forward"] = dict(features=list(out.shape))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info.get('model') or args.ckpt}  ({info['architecture']})")
    for k, v in info.items():
        if k in ("params_trainable", "params_official", "forward", "model", "architecture"):
            continue
        print(f"  {k:<20} {v}")
    print(f"  {'params (trainable)':<20} {info['params_trainable']:,} ({info['params_trainable'] / 1e6:.2f}M)")
    if "params_official" in info:
        if info["architecture"] == "crate_supervised":
            note = "[the official code trains every tensor it has: the same count]"
        else:
            note = "[counts the frozen sin-cos tables" + (
                " and the unused decoder_embed]" if info.get("mask_tokens_in_encoder") else "]"
            )
        print(f"  {'params (official)':<20} {info['params_official']:,} ({info['params_official'] / 1e6:.2f}M)  {note}")
    if "forward" in info:
        print(f"  {'forward (random)':<20} {info['forward']}")
    return 0


def _convert(args) -> int:
    model = load_checkpoint(args.src, **parse_key_values(args.overrides))
    # Provenance travels in config.json, so a later push_to_hub or model card names the original weights.
    src = Path(args.src)
    if src.is_file():
        fmt = detect_format(read_state_dict(src))
        known = OFFICIAL_SOURCES.get(model.config.architecture, {}) if fmt.endswith("_official") else {}
        model.provenance["weights_source"] = {
            "file": src.name,
            "sha256": file_sha256(src),
            "format": fmt,
            **known,
            **{k: v for k, v in (("upstream", args.source), ("license", args.license), ("data", args.data)) if v},
        }
    if args.model_card:
        out = save_for_hub(
            model, args.out_dir, repo_id=args.repo_id, license=args.license, data=args.data, source=args.source
        )
    else:
        out = save_pretrained(model, args.out_dir)
    card = f" and {out / 'README.md'}" if args.model_card else ""
    print(
        f"wrote {out / 'config.json'}, {out / 'model.safetensors'}{card} "
        f"({model.config.architecture}, {model.num_params('trainable'):,} trainable parameters)"
    )
    return 0
