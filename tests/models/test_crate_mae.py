"""Behaviour of the CRATE-MAE model: shapes, errors, masking, fast vs reference, intermediates."""

import pytest
import torch
from tiny import tiny_kwargs

import crate_mae
from crate_mae.models import ISTA, MSSA, random_masking
from crate_mae.models.official import ISTA as OfficialISTA


@pytest.fixture
def model(tiny_model_kwargs):
    return crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="30x32 is not a positive multiple of the patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        model(torch.randn(3, 32, 32))
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=f"mask_ratio must be in \\[0, 1\\), got {bad}"):
            model(torch.randn(1, 3, 32, 32), mask_ratio=bad)
    with pytest.raises(ValueError, match="noise must have shape"):
        model(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 5))


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="embed_dim=30 is not divisible by num_heads=4"):
        crate_mae.create_model("crate_mae_tiny", embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="img_size=30 is not a positive multiple of patch_size=8"):
        crate_mae.create_model("crate_mae_tiny", img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="decoder_depth must be >= 1"):
        crate_mae.create_model("crate_mae_tiny", decoder_depth=0)
    with pytest.raises(ValueError, match="ista_lambda must be >= 0"):
        crate_mae.create_model("crate_mae_tiny", ista_lambda=-0.5)
    with pytest.raises(ValueError, match="decoder_embed_dim .* must equal embed_dim"):
        crate_mae.create_model("vit_mae_base_paper", decoder_embed_dim=512)


def test_mask_ratio_zero_and_noise_determinism(model):
    imgs = torch.randn(2, 3, 32, 32)
    out = model(imgs, mask_ratio=0.0)
    assert out.mask.sum() == 0 and torch.isfinite(out.loss)
    noise = torch.rand(2, 16)
    a, b = model(imgs, noise=noise), model(imgs, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pred, b.pred)
    # official rule: ascending argsort of the noise, the first int(L * (1 - r)) are kept
    keep = torch.argsort(noise, dim=1)[:, :4]
    assert torch.equal(a.mask.gather(1, keep), torch.zeros(2, 4))
    assert a.mask.sum() == 2 * 12


def test_masked_patches_only_see_the_mask_token(model):
    """Masked patch content must not leak into the encoder: changing it leaves every output unchanged."""
    imgs = torch.randn(1, 3, 32, 32)
    noise = torch.rand(1, 16)
    mask, _, _ = random_masking(1, 16, 0.75, noise)
    masked_idx = int(mask[0].nonzero()[0])
    r, c = divmod(masked_idx, 4)
    imgs2 = imgs.clone()
    imgs2[..., r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] += 5.0
    a, b = model(imgs, noise=noise), model(imgs2, noise=noise)
    assert torch.allclose(a.latent, b.latent) and torch.allclose(a.pred, b.pred)


def test_forward_features_deterministic_in_train_and_eval(model):
    imgs = torch.randn(2, 3, 32, 32)
    model.train()
    f1 = model.forward_features(imgs)
    model.eval()
    f2 = model.forward_features(imgs)
    assert f1.shape == (2, 17, 32) and torch.equal(f1, f2)


def test_layer_equations_against_literal_arithmetic():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    ista = ISTA(16, step_size=0.1, lambd=0.5).double()
    D = ista.dictionary
    expected = torch.relu(x + 0.1 * (x @ D - x @ D.T @ D) - 0.05)  # row form of ReLU(X + eta D^T(X - DX) - eta lam)
    torch.testing.assert_close(ista(x), expected)
    official = OfficialISTA(16, 0.1, 0.5).double()
    official.weight.data.copy_(D.data)
    torch.testing.assert_close(official(x), expected)
    mssa = MSSA(16, num_heads=4).double()
    w = (x @ mssa.qkv.weight.T).view(2, 5, 4, 4).transpose(1, 2)
    heads = torch.softmax(w @ w.transpose(-1, -2) / 2.0, dim=-1) @ w
    expected = heads.transpose(1, 2).reshape(2, 5, 16) @ mssa.proj.weight.T + mssa.proj.bias
    torch.testing.assert_close(mssa(x), expected)


def test_ista_output_is_nonnegative_and_sparse(model):
    inter = model.trace_layers(torch.randn(2, 3, 32, 32))
    for trace in inter.encoder.values():
        assert (trace.z_out >= 0).all()
        assert (trace.z_out == 0).any()


def test_trace_layers_consistent(model):
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    inter = model.trace_layers(imgs, mask_ratio=0.75, noise=noise)
    out = model(imgs, mask_ratio=0.75, noise=noise)
    torch.testing.assert_close(inter.latent, out.latent)
    torch.testing.assert_close(inter.pred, out.pred)
    assert sorted(inter.encoder) == [0, 1] and sorted(inter.decoder) == [0, 1]
    e0, e1 = inter.encoder[0], inter.encoder[1]
    torch.testing.assert_close(e1.z_in, e0.z_out)
    blk = model.encoder.blocks[0]
    torch.testing.assert_close(e0.z_half, e0.z_in + blk.attn(blk.norm1(e0.z_in)))
    torch.testing.assert_close(e0.ista_in, blk.norm2(e0.z_half))
    d0 = inter.decoder[0]
    torch.testing.assert_close(d0.z_in, inter.latent)
    dblk = model.decoder.blocks[0]
    torch.testing.assert_close(d0.z_out, d0.z_half - dblk.attn(dblk.norm2(d0.z_half)))
    unmasked = model.trace_layers(imgs, encoder_layers=[-1], decoder_layers=[])
    assert list(unmasked.encoder) == [1] and not unmasked.decoder
    torch.testing.assert_close(unmasked.latent, model.forward_features(imgs))


def test_attention_maps(model):
    attn = model.attention_maps(torch.randn(2, 3, 32, 32), layer=0)
    assert attn.shape == (2, 4, 17, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 17))
    with pytest.raises(ValueError, match="encoder layer 5 out of range for 2 layers"):
        model.attention_maps(torch.randn(1, 3, 32, 32), layer=5)


@pytest.mark.parametrize("mode", ["interpolate", "sincos"])
def test_other_input_sizes(tiny_model_kwargs, mode):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs, pos_embed_mode=mode)
    table = model.encoder.pos_embed.table.clone()
    for shape in [(48, 48), (32, 48), (16, 40)]:
        imgs = torch.randn(2, 3, *shape)
        L = (shape[0] // 8) * (shape[1] // 8)
        out = model(imgs)
        assert out.pred.shape == (2, L, 192)
        assert model.forward_features(imgs).shape == (2, 1 + L, 32)
        assert model.attention_maps(imgs).shape == (2, 4, 1 + L, 1 + L)
        torch.testing.assert_close(model.unpatchify(model.patchify(imgs), model.grid_size(imgs)), imgs)
    assert torch.equal(model.encoder.pos_embed.table, table)  # never mutated in place
    with pytest.raises(ValueError, match="pos_embed_mode"):
        crate_mae.create_model("crate_mae_tiny", pos_embed_mode="learned")


def test_norm_pix_loss_changes_target(tiny_model_kwargs):
    imgs = torch.rand(2, 3, 32, 32) * 10
    noise = torch.rand(2, 16)
    a = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    b = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs, norm_pix_loss=True)
    b.load_state_dict(a.state_dict())
    la, lb = a(imgs, noise=noise).loss, b(imgs, noise=noise).loss
    assert lb < la  # normalised targets are O(1); raw ones here are O(10)


def test_encoder_classifier_api(tiny_encoder):
    clf = crate_mae.create_model("crate_tiny", **tiny_encoder, num_classes=7)
    imgs = torch.randn(2, 3, 32, 32)
    feats = clf.forward_features(imgs)
    assert clf.forward_head(feats).shape == (2, 7)
    torch.testing.assert_close(clf.forward_head(feats, pre_logits=True), feats[:, 0])
    clf.reset_classifier(3, global_pool="avg")
    assert clf(imgs).shape == (2, 3)
    torch.testing.assert_close(clf.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    clf.reset_classifier(0)
    assert clf(imgs).shape == (2, 32)


@pytest.mark.parametrize("name", ["crate_mae_tiny", "vit_mae_base"])
def test_both_masking_frames(name, tiny_model_kwargs):
    """mask tokens in the encoder: latent holds 1 + L tokens; visible-only: 1 + L_keep. Either way the content of
    masked patches never reaches any output, the mask token is trained, and the frame survives save / load."""
    kw = dict(tiny_model_kwargs)
    if name.startswith("vit"):
        kw.update(decoder_embed_dim=32, decoder_num_heads=4)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    mask, _, _ = random_masking(2, 16, 0.75, noise)
    imgs2 = imgs.clone()
    r, c = divmod(int(mask[0].nonzero()[0]), 4)
    imgs2[0, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] += 5.0
    for in_encoder in (True, False):
        model = crate_mae.create_model(name, **kw, mask_tokens_in_encoder=in_encoder)
        out = model(imgs, noise=noise)
        assert out.latent.shape == (2, 1 + (16 if in_encoder else 4), 32)
        assert out.pred.shape == (2, 16, 192)
        same = model(imgs2, noise=noise)
        assert torch.equal(out.latent, same.latent) and torch.equal(out.pred, same.pred)
        out.loss.backward()
        assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
        assert model.config.mask_tokens_in_encoder is in_encoder
        assert model.forward_features(imgs).shape == (2, 17, 32)


def test_frame_round_trip_and_override(tmp_path, tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs, mask_tokens_in_encoder=False)
    crate_mae.save_pretrained(model, tmp_path / "m")
    assert crate_mae.load_checkpoint(tmp_path / "m").mask_tokens_in_encoder is False
    assert crate_mae.load_checkpoint(tmp_path / "m", mask_tokens_in_encoder=True).mask_tokens_in_encoder is True
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            crate_mae.load_checkpoint(tmp_path / "m")(imgs, noise=noise).pred, model(imgs, noise=noise).pred
        )


def test_visible_only_intermediates_match_forward(tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs, mask_tokens_in_encoder=False).eval()
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    inter = model.trace_layers(imgs, mask_ratio=0.75, noise=noise)
    out = model(imgs, noise=noise)
    torch.testing.assert_close(inter.latent, out.latent)
    torch.testing.assert_close(inter.pred, out.pred)
    assert inter.encoder[0].z_in.shape == (2, 5, 32) and inter.decoder[0].z_in.shape == (2, 17, 32)


def test_paper_vit_mae_has_no_dead_layers():
    model = crate_mae.create_model(
        "vit_mae_base_paper",
        **{**tiny_kwargs("vit_mae_base_paper"), "depth": 1, "decoder_depth": 1, "decoder_num_heads": 4},
    )
    names = [k for k, _ in model.named_parameters()]
    assert not any(k.startswith("decoder_embed") for k in names)
    assert not any(k.endswith("qkv.bias") for k in names)
