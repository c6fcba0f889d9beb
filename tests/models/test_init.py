"""A fresh model starts where the official code starts: every parameter tensor is compared with the official
models at initialisation (tests/fixtures/*.official_state_dict.safetensors).

Per tensor: constant tensors (LayerNorm 1 / 0, zero biases) are equal; otherwise the standard deviation agrees within
10 % and max |.| within 20 %. For tensors under 1,000 entries the sample statistics are noisy, so the std tolerance
widens to three standard errors of the ratio of two independent sample stds (each has relative error 1 / sqrt(2n),
their ratio sqrt(2) times that: 3 / sqrt(n)) and max |.| is not compared (the tokens are N(0, 0.02): their maximum
over 64 draws varies by tens of percent). The bug this guards against, kaiming a = sqrt(5) instead of a = 0, is a
2.45x difference on 4,096-entry matrices.
"""

import math

import pytest
import torch
from official_fixtures import FIXTURES, official_fixture
from safetensors.torch import load_file

import crate_mae
from crate_mae.models.crate_supervised import from_official as convert_official_supervised_crate
from crate_mae.models.official import from_official as convert_official_crate

SMALL = 1000


def compare(name: str, ours: torch.Tensor, official: torch.Tensor) -> str | None:
    """None if ``ours`` is distributed like ``official``, else why not."""
    ours, official = ours.double(), official.double()
    if ours.shape != official.shape:
        return f"{name}: shape {tuple(ours.shape)} vs official {tuple(official.shape)}"
    if official.numel() == 1 or torch.all(official == official.flatten()[0]):
        return None if torch.equal(ours, official) else f"{name}: official is constant {official.flatten()[0]:.3g}"
    n = official.numel()
    tol = 0.10 if n >= SMALL else max(0.10, 3 / math.sqrt(n))
    s_ours, s_off = ours.std().item(), official.std().item()
    if abs(s_ours / s_off - 1) > tol:
        return f"{name}: std {s_ours:.4f} vs official {s_off:.4f} (tolerance {tol:.0%})"
    m_ours, m_off = ours.abs().max().item(), official.abs().max().item()
    if n >= SMALL and abs(m_ours / m_off - 1) > 0.20:
        return f"{name}: max|.| {m_ours:.4f} vs official {m_off:.4f} (tolerance 20%)"
    return None


def fresh_like(name: str):
    """Our freshly initialised model with the fixture's configuration, and the official state dict in our names."""
    path, _, meta = official_fixture(name)
    official = load_file(str(path))
    if name == "crate_micro":  # supervised CRATE: default PyTorch inits, N(0, 1) tokens and position table
        model = crate_mae.create_model(
            "crate_supervised_tiny",
            img_size=meta["img_size"],
            patch_size=meta["patch_size"],
            embed_dim=meta["embed_dim"],
            depth=meta["depth"],
            num_heads=meta["num_heads"],
            num_classes=meta["num_classes"],
        )
        return model, convert_official_supervised_crate(official)
    common = dict(
        img_size=meta["img_size"],
        patch_size=meta["patch_size"],
        embed_dim=meta["embed_dim"],
        depth=meta["depth"],
        num_heads=meta["num_heads"],
        decoder_depth=meta["decoder_depth"],
    )
    if name == "crate_mae_micro":
        model = crate_mae.create_model("crate_mae_tiny", **common)
        return model, convert_official_crate(official)
    kw = dict(
        decoder_embed_dim=meta["decoder_embed_dim"],
        decoder_num_heads=meta["decoder_num_heads"],
        qkv_bias=meta["qkv_bias"],
        mlp_ratio=meta["mlp_ratio"],
    )
    model = crate_mae.create_model(
        "vit_mae_base_paper" if meta.get("mask_tokens_in_encoder") else "vit_mae_base", **common, **kw
    )
    unused = ("pos_embed", "decoder_pos_embed") + (
        ("decoder_embed.weight", "decoder_embed.bias") if model.mask_tokens_in_encoder else ()
    )
    return model, {k: v for k, v in official.items() if k not in unused}


@pytest.mark.parametrize("name", ["crate_mae_micro", "vit_mae_micro", "paper_vit_mae_micro", "crate_micro"])
def test_fresh_model_is_initialised_like_the_official_code(name):
    torch.manual_seed(0)
    model, official = fresh_like(name)
    ours = model.state_dict()
    assert sorted(ours) == sorted(official), "parameter names differ from the official model"
    problems = [p for k in official if (p := compare(k, ours[k], official[k])) is not None]
    assert not problems, "initialised unlike the official code:\n  " + "\n  ".join(problems)


def test_the_comparison_catches_the_old_dictionary_init():
    """The check can fail: nn.Linear's default (a = sqrt(5)) on the ISTA dictionary is named as wrong."""
    torch.manual_seed(0)
    model, official = fresh_like("crate_mae_micro")
    d = model.encoder.blocks[0].ista.dictionary
    torch.nn.init.kaiming_uniform_(d.data, a=math.sqrt(5))
    why = compare("encoder.blocks.0.ista.dictionary", d.detach(), official["encoder.blocks.0.ista.dictionary"])
    assert why is not None and "encoder.blocks.0.ista.dictionary: std" in why


def test_the_comparison_catches_a_wrong_position_table_init():
    """Supervised CRATE's table is N(0, 1), not CRATE-MAE's fixed sin-cos or MAE's N(0, 0.02): the check says so."""
    torch.manual_seed(0)
    model, official = fresh_like("crate_micro")
    table = model.pos_embed.table
    torch.nn.init.normal_(table.data, std=0.02)
    why = compare("pos_embed.table", table.detach(), official["pos_embed.table"])
    assert why is not None and "pos_embed.table: std" in why


def test_fixtures_are_present():
    assert len(list(FIXTURES.glob("*.official_state_dict.safetensors"))) == 4
