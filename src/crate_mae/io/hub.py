"""The Hugging Face Hub, reading and writing (``pip install 'crate-mae[hub]'`` for the network side).

A Hub repository of ours holds exactly what :func:`crate_mae.save_pretrained` writes (``config.json`` +
``model.safetensors``) and a model card (``README.md``: the configuration, parameter counts, training data, and the
source and licence of the weights). Nothing here touches the network unless asked:

- :func:`hub_snapshot` (and so ``crate_mae.load_checkpoint("hf-hub:ORG/NAME")`` / ``crate_mae.from_pretrained``)
  reads the local Hugging Face cache only; ``download=True`` fetches into that cache (``HF_HUB_OFFLINE=1`` still
  forbids it);
- :func:`push_to_hub` uploads, and is never called implicitly;
- :func:`save_for_hub` (and ``crate-mae convert --model-card``) writes a ready-to-upload folder, offline, and needs
  no extra package.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, TypeGuard

import torch.nn as nn
import yaml

from .._version import __version__
from ..models.base import Capabilities
from ..utils import atomic_write, file_sha256
from ..utils.extras import require
from .format import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

HUB_PREFIX = "hf-hub:"
CARD_NAME = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")

# Where the official weights that `crate-mae convert` reads come from, and under which licence they are published.
OFFICIAL_SOURCES = {
    "crate_mae": {
        "upstream": "Ma-Lab-Berkeley/CRATE (https://github.com/Ma-Lab-Berkeley/CRATE)",
        "license": "mit",
        "data_note": "Not recorded in the weights file. The CRATE-MAE-Base checkpoint released by the CRATE "
        "authors was pretrained on ImageNet-1K (masked completion).",
    },
    "crate_supervised": {
        "upstream": "Ma-Lab-Berkeley/CRATE (https://github.com/Ma-Lab-Berkeley/CRATE), model/crate.py",
        "license": "mit",
        "data_note": "Not recorded in the weights file. The supervised CRATE checkpoints linked from "
        "the CRATE README were trained on ImageNet-1K classification.",
    },
    "vit_mae": {
        "upstream": "facebookresearch/mae (https://github.com/facebookresearch/mae)",
        "license": "cc-by-nc-4.0",
        "data_note": "Not recorded in the weights file. The checkpoints released by the MAE authors were "
        "pretrained on ImageNet-1K.",
    },
}
_DESCRIPTIONS = {
    "crate_mae": "a CRATE-MAE white-box masked autoencoder (Pai, Wu, Buchanan, Yu, Ma: *Masked Completion via "
    "Structured Diffusion with White-Box Transformers*, ICLR 2024): every encoder layer is an MSSA "
    "compression step and an ISTA sparsification step; the decoder runs the reverse process",
    "crate": "the CRATE encoder of a white-box masked autoencoder, as a timm-style classifier",
    "crate_supervised": "supervised CRATE, a white-box image classifier (Yu et al.: *White-Box Transformers via Sparse "
    "Rate Reduction*, NeurIPS 2023): every layer is an MSSA compression step and an ISTA "
    "sparsification step",
    "vit_mae": "a ViT masked autoencoder in the facebookresearch/mae layout (the baseline of CRATE-MAE)",
    "vit": "a ViT encoder (from a masked autoencoder) as a timm VisionTransformer classifier",
}
_CITATION = """@inproceedings{pai2024masked,
  title     = {Masked Completion via Structured Diffusion with White-Box Transformers},
  author    = {Pai, Druv and Wu, Ziyang and Buchanan, Sam and Yu, Yaodong and Ma, Yi},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024}
}"""
_CRATE_CITATION = """@inproceedings{yu2023whitebox,
  title     = {White-Box Transformers via Sparse Rate Reduction},
  author    = {Yu, Yaodong and Buchanan, Sam and Pai, Druv and Chu, Tianzhe and Wu, Ziyang and Tong, Shengbang and
               Haeffele, Benjamin D. and Ma, Yi},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023}
}"""
_MAE_CITATION = """@inproceedings{he2022masked,
  title     = {Masked Autoencoders Are Scalable Vision Learners},
  author    = {He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}"""


# -- reading: a Hub model from the local Hugging Face cache -------------------------------------------------------
def is_hub_id(source: Any) -> TypeGuard[str]:
    """Whether ``source`` names a Hub repository (``"hf-hub:ORG/NAME[@REVISION]"``)."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(source: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/NAME[@REVISION]"`` (or ``"ORG/NAME"``) -> ``(repo_id, revision or None)``."""
    rest = source[len(HUB_PREFIX) :] if source.startswith(HUB_PREFIX) else source
    repo_id, _, revision = rest.partition("@")
    if not _REPO_ID.match(repo_id) or (_ and not revision):
        raise ValueError(f"{source!r} is not a Hub model id; expected {HUB_PREFIX}ORG/NAME or {HUB_PREFIX}ORG/NAME@REV")
    return repo_id, revision or None


def hub_snapshot(
    source: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None, download: bool = False
) -> Path:
    """The local folder of a Hub model (``config.json`` + ``model.safetensors``).

    Reads the Hugging Face cache (``cache_dir``, default ``HF_HUB_CACHE``) only, unless ``download=True``, which
    fetches the repository's ``config.json``, ``model.safetensors`` and ``README.md`` into it. ``revision`` (or
    ``@REV`` in ``source``) pins a branch, tag or commit. FileNotFoundError when it is not cached (or lacks our
    files), ValueError for a bad id or a repository / revision the Hub does not have.
    """
    repo_id, pinned = parse_hub_id(source)
    if pinned and revision and pinned != revision:
        raise ValueError(f"{source!r} pins revision {pinned!r} but revision={revision!r} was passed too")
    revision = revision or pinned
    hf = require("huggingface_hub", "hub", "reading weights from the Hugging Face Hub")
    from huggingface_hub import errors

    cache = str(cache_dir) if cache_dir is not None else hf.constants.HF_HUB_CACHE
    try:
        folder = Path(
            hf.snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=not download,
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
                library_name="crate-mae",
                library_version=__version__,
            )
        )
    except errors.LocalEntryNotFoundError:
        at = f" at revision {revision!r}" if revision else ""
        if not download:
            raise FileNotFoundError(
                f"{source}{at} is not in the local Hugging Face cache ({cache}); nothing is downloaded unless asked: "
                "pass download=True, or fetch it first with `hf download " + repo_id + "`"
            ) from None
        offline = "HF_HUB_OFFLINE is set" if hf.constants.HF_HUB_OFFLINE else "no connection to the Hub?"
        raise FileNotFoundError(
            f"{source}{at} is not cached and could not be downloaded ({offline}); cache: {cache}"
        ) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError) as e:
        raise ValueError(f"{source}: {str(e).splitlines()[0]}") from None
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} ({folder}) has no {' or '.join(missing)}: not a crate-mae model repository"
            + ("" if download else ", or only partly cached (pass download=True)")
        )
    return folder


# -- writing -----------------------------------------------------------------------------------------------------------
def save_for_hub(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    data: str | None = None,
    source: str | None = None,
) -> Path:
    """Write a ready-to-upload folder: ``config.json`` + ``model.safetensors`` (:func:`crate_mae.save_pretrained`)
    and the model card ``README.md``. ``license`` (a Hub licence id such as ``mit``), ``data`` (what the weights
    were trained on) and ``source`` (where they come from) default to what ``model.provenance["weights_source"]``
    records (set by ``crate-mae convert``); without them the card says they are not stated. Offline, atomic."""
    directory = save_pretrained(model, directory)
    card = model_card(
        model,
        repo_id=repo_id,
        license=license,
        data=data,
        source=source,
        weights_sha256=file_sha256(directory / WEIGHTS_NAME),
    )
    atomic_write(directory / CARD_NAME, lambda tmp: Path(tmp).write_text(card))
    return directory


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    data: str | None = None,
    source: str | None = None,
):
    """Upload ``model`` to the Hub repository ``repo_id`` (created if needed; ``private`` applies then): the
    folder :func:`save_for_hub` writes, as one commit. Needs network and a token with write access (``token`` or
    ``hf auth login``). Returns huggingface_hub's ``CommitInfo`` (``.commit_url``, ``.oid``)."""
    hf = require("huggingface_hub", "hub", "uploading weights to the Hugging Face Hub")
    repo_id, pinned = parse_hub_id(repo_id)
    revision = revision or pinned
    assert isinstance(model, Capabilities)  # a crate-mae model (save_pretrained says so otherwise)
    name = model.model_name or model.config.architecture
    api = hf.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="crate-mae-hub-") as tmp:
        save_for_hub(model, tmp, repo_id=repo_id, license=license, data=data, source=source)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            revision=revision,
            commit_message=commit_message or f"Upload {name} (crate-mae {__version__})",
        )


def model_card(
    model: nn.Module,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    data: str | None = None,
    source: str | None = None,
    weights_sha256: str | None = None,
) -> str:
    """The model card (Markdown with Hub YAML metadata) of ``model``; see :func:`save_for_hub` for the fields."""
    assert isinstance(model, Capabilities)  # a crate-mae model: it has a config
    config = {**model.config.to_dict(), "model": model.model_name}
    recorded = model.provenance.get("weights_source")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    license = license or recorded.get("license")
    data = data or recorded.get("data") or recorded.get("data_note")
    source = source or recorded.get("upstream")
    arch = model.config.architecture
    name = model.model_name or arch
    meta: dict[str, Any] = {"library_name": "crate-mae"}
    if license:
        meta["license"] = license
    task = "image-classification" if arch == "crate_supervised" else "image-feature-extraction"
    kind = "image-classifier" if arch == "crate_supervised" else "masked-autoencoder"
    meta["tags"] = ["crate-mae", "white-box-transformer", kind, task, "pytorch", "safetensors"]
    meta["pipeline_tag"] = task
    repo = repo_id or "ORG/NAME"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    official = None
    try:
        official = model.num_params("official")
    except ValueError:  # an encoder classifier has no official count
        pass
    rows = "\n".join(f"| `{k}` | `{_cell(v)}` |" for k, v in sorted(config.items()) if v is not None)
    origin = [f"- Source: {source}" if source else "- Source: not stated by the uploader"]
    if recorded.get("file"):
        origin.append(
            f"- Converted by `crate-mae convert` from `{recorded['file']}` "
            f"(sha256 `{recorded.get('sha256')}`, "
            f"{recorded.get('format', 'official')} layout)"
        )
    if recorded.get("format") == "crate_mae_official":
        origin.append(
            "- The official weights do not store ISTA's λ and η: the values in the table are those given at "
            "conversion (0.5 / 0.1 unless overridden)."
        )
    if recorded.get("format") == "crate_supervised_official":
        origin.append(
            "- The official weights do not store ISTA's λ and η: the official code fixes λ = 0.1 and "
            "defaults η to 0.1; the table shows the values given at conversion."
        )
    if not license:
        origin.append("- Licence of the weights: not stated by the uploader")
    elif license == recorded.get("license") and source == recorded.get("upstream"):
        origin.append(f"- Licence of the weights: {license} (the licence of the repository that publishes them)")
    else:
        origin.append(f"- Licence of the weights: {license}")
    if weights_sha256:
        origin.append(f"- `model.safetensors` sha256: `{weights_sha256}`")
    params = f"- trainable: {trainable:,} ({trainable / 1e6:.2f}M)"
    if official is not None:
        params += f"\n- official convention: {official:,} ({official / 1e6:.2f}M; counts the frozen sin-cos tables" + (
            " and the unused `decoder_embed` of the official code)" if arch == "crate_mae" else ")"
        )
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {repo_id or name}

`{name}`: {_DESCRIPTIONS.get(arch, arch)}. Stored as `config.json` + `model.safetensors` for the
crate-mae library (written by crate-mae {__version__}).

## Use

```python
# pip install 'crate-mae[hub]'
import crate_mae

model = crate_mae.from_pretrained("hf-hub:{repo}", download=True)   # later runs: offline, from the cache
```

## Configuration

| key | value |
|---|---|
{rows}

## Parameters

{params}

## Training data

{data or "Not stated by the uploader."}

## Source and licence

{chr(10).join(origin)}

## Citation

```bibtex
{_citation(arch)}
```
"""


def _citation(arch: str) -> str:
    if arch == "crate_supervised":
        return _CRATE_CITATION
    return _CITATION if arch.startswith("crate") else _MAE_CITATION + "\n\n" + _CITATION


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("`", "'")
