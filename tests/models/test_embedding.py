"""The position table for other grids, and the two masking frames' token preparation."""

import math

import pytest
import torch
import torch.nn.functional as F

import crate_mae
from crate_mae.models import sincos_pos_embed
from crate_mae.models.embedding import PositionTable, restore_with_mask_tokens, tokens_with_mask_tokens, visible_tokens
from crate_mae.models.masking import random_masking


def dino_interpolate_pos_encoding(pos_embed, h, w):
    """DINO's / the CRATE repo's interpolate_pos_encoding, written out as they write it (square training grid)."""
    n = pos_embed.shape[1] - 1
    dim = pos_embed.shape[-1]
    h0, w0 = h + 0.1, w + 0.1
    patch = F.interpolate(
        pos_embed[:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)),
        mode="bicubic",
    )
    patch = patch.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((pos_embed[:, 0].unsqueeze(0), patch), dim=1)


@pytest.mark.parametrize("grid", [(6, 6), (3, 5), (8, 2)])
def test_interpolation_is_the_official_one(grid):
    table = PositionTable(32, (4, 4), "interpolate")
    torch.testing.assert_close(table(grid), dino_interpolate_pos_encoding(table.table, *grid))


def test_training_grid_is_the_table_in_both_modes_and_fp32():
    for mode in ("interpolate", "sincos"):
        t = PositionTable(32, (4, 4), mode)
        assert t((4, 4)) is t.table and t.table.dtype == torch.float32
        torch.testing.assert_close(t.table[0], sincos_pos_embed(32, (4, 4)))


def test_sincos_mode_recomputes_and_restricts_to_the_training_table():
    t = PositionTable(32, (4, 4), "sincos")
    big = t((6, 6))[0, 1:].reshape(6, 6, -1)
    torch.testing.assert_close(big[:4, :4].reshape(16, -1), t.table[0, 1:])


def test_other_grids_are_cached_per_device():
    t = PositionTable(32, (4, 4))
    assert t((6, 6)) is t((6, 6))
    assert t((6, 6)).device == t.table.device


def test_the_two_frames_agree_when_nothing_is_masked():
    patches, cls, pos = torch.randn(2, 16, 32), torch.randn(1, 1, 32), PositionTable(32, (4, 4))((4, 4))
    torch.testing.assert_close(tokens_with_mask_tokens(patches, cls, pos), visible_tokens(patches, cls, pos))


def test_mask_tokens_go_back_where_patches_were_removed():
    n, length, d = 3, 16, 8
    mask, ids_keep, ids_restore = random_masking(n, length, 0.75)
    x = torch.randn(n, length, d)
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    cls, mask_token = torch.randn(n, 1, d), torch.full((1, 1, d), 7.0)
    full = restore_with_mask_tokens(torch.cat([cls, kept], 1), mask_token, ids_restore)
    assert torch.equal(full[:, 0], cls[:, 0])
    m = mask.bool()
    assert torch.equal(full[:, 1:][~m], x[~m])
    assert (full[:, 1:][m] == 7.0).all()


def test_bf16_autocast_keeps_the_residual_stream_fp32(tiny_model_kwargs):
    """The official code adds an fp32 table, which promotes the tokens to fp32 under autocast."""
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.encoder.prepare_tokens(torch.randn(2, 3, 32, 32))
        vis = model.encoder.prepare_visible_tokens(torch.randn(2, 3, 32, 32), torch.arange(4).expand(2, 4))
    assert tokens.dtype == torch.float32 and vis.dtype == torch.float32
