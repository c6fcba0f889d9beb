"""Faithfulness: official state dicts reproduce every output the official code produced (fp32, rtol 1e-4, atol 1e-5).

The fixtures (tests/fixtures, provenance in each NAME.json) were built and run by the official code on another
machine. Float results are therefore compared within TOL, never bit for bit: the same fp32 program differs by a few
1e-6 between CPU kernels (``ATEN_CPU_CAPABILITY=default`` / ``avx2`` / ``avx512``) and thread counts. Masks are
integer decisions and must match exactly. Reading them: tests/official_fixtures.py."""

import pytest
import torch
from official_fixtures import TOL, official_fixture
from safetensors.torch import load_file

import crate_mae
from crate_mae.models.official import OfficialCrateMAE, official_copy, to_official


def test_transcription_of_the_official_code_reproduces_the_fixture():
    """models/official.py, the baseline of every speed ratio, takes the official state dict as is and computes what
    the official code computed (same mask, floats within TOL on any CPU)."""
    path, io, meta = official_fixture("crate_mae_micro")
    model = OfficialCrateMAE(
        meta["img_size"],
        meta["patch_size"],
        meta["in_chans"],
        meta["embed_dim"],
        meta["depth"],
        meta["num_heads"],
        meta["decoder_depth"],
    )
    model.load_state_dict(load_file(str(path)))
    assert sum(p.numel() for p in model.parameters()) == meta["n_parameters"]
    with torch.no_grad():
        loss, pred, mask, latent = model(io["imgs"], meta["mask_ratio"], io["noise"])
        assert torch.equal(mask, io["mask"])
        torch.testing.assert_close(latent, io["latent"], **TOL)
        torch.testing.assert_close(pred, io["pred"], **TOL)
        torch.testing.assert_close(loss.reshape(1), io["loss"], **TOL)
        torch.testing.assert_close(model.forward_features(io["imgs"]), io["features"], **TOL)


def test_crate_mae_micro_reproduces_official_outputs():
    path, io, meta = official_fixture("crate_mae_micro")
    model = crate_mae.load_checkpoint(path, num_heads=meta["num_heads"])
    assert model.num_params("official") == meta["n_parameters"]
    with torch.no_grad():
        out = model(io["imgs"], mask_ratio=meta["mask_ratio"], noise=io["noise"])
        assert torch.equal(out.mask, io["mask"])
        assert torch.allclose(out.latent, io["latent"], **TOL)
        assert torch.allclose(out.pred, io["pred"], **TOL)
        assert torch.allclose(out.loss.reshape(1), io["loss"], **TOL)
        assert torch.allclose(model.forward_features(io["imgs"]), io["features"], **TOL)
        assert torch.allclose(model.attention_maps(io["imgs"], layer=-1), io["attn_last"], **TOL)


def test_crate_mae_micro_train_mode_is_the_same_model():
    """No dropout anywhere: train mode computes the same function (what pretraining differentiates)."""
    path, io, meta = official_fixture("crate_mae_micro")
    model = crate_mae.load_checkpoint(path, num_heads=4).train()
    out = model(io["imgs"], noise=io["noise"])
    assert torch.allclose(out.pred, io["pred"], **TOL)
    out.loss.backward()


def test_vit_mae_micro_reproduces_official_outputs():
    path, io, meta = official_fixture("vit_mae_micro")
    model = crate_mae.load_checkpoint(
        path,
        num_heads=meta["num_heads"],
        decoder_num_heads=meta["decoder_num_heads"],
        norm_pix_loss=meta["norm_pix_loss"],
    )
    assert model.num_params("official") == meta["n_parameters"]
    with torch.no_grad():
        out = model(io["imgs"], mask_ratio=meta["mask_ratio"], noise=io["noise"])
    assert torch.equal(out.mask, io["mask"])
    assert torch.allclose(out.latent, io["latent"], **TOL)
    assert torch.allclose(out.pred, io["pred"], **TOL)
    assert torch.allclose(out.loss.reshape(1), io["loss"], **TOL)


def test_paper_vit_mae_micro_reproduces_official_outputs():
    """The CRATE repo's ViT-MAE baseline: the same key names as facebookresearch/mae, the other frame."""
    path, io, meta = official_fixture("paper_vit_mae_micro")
    model = crate_mae.load_checkpoint(
        path, mask_tokens_in_encoder=True, num_heads=meta["num_heads"], decoder_num_heads=meta["decoder_num_heads"]
    )
    assert model.mask_tokens_in_encoder and not model.config.qkv_bias
    assert model.num_params("official") == meta["n_parameters"]
    with torch.no_grad():
        out = model(io["imgs"], mask_ratio=meta["mask_ratio"], noise=io["noise"])
        assert torch.equal(out.mask, io["mask"])
        assert out.latent.shape == io["latent"].shape  # mask tokens included: 1 + L tokens
        assert torch.allclose(out.latent, io["latent"], **TOL)
        assert torch.allclose(out.pred, io["pred"], **TOL)
        assert torch.allclose(out.loss.reshape(1), io["loss"], **TOL)
        assert torch.allclose(model.forward_features(io["imgs"]), io["features"], **TOL)


def test_paper_vit_mae_weights_in_the_wrong_frame_are_flagged():
    """Without the keyword the weights load in facebookresearch/mae's frame; the loader says they look like the
    CRATE repo's baseline, and the outputs indeed differ."""
    path, io, meta = official_fixture("paper_vit_mae_micro")
    with pytest.warns(UserWarning, match="mask_tokens_in_encoder=True"):
        model = crate_mae.load_checkpoint(path, num_heads=4, decoder_num_heads=4)
    with torch.no_grad():
        out = model(io["imgs"], mask_ratio=meta["mask_ratio"], noise=io["noise"])
    assert not torch.allclose(out.pred, io["pred"], **TOL)


def test_to_official_inverts_the_conversion():
    path, io, meta = official_fixture("crate_mae_micro")
    official = load_file(str(path))
    back = to_official(crate_mae.load_checkpoint(path, num_heads=4))
    assert sorted(back) == sorted(official)
    assert all(
        torch.equal(back[k], official[k])
        for k in official
        if k not in ("pos_embed", "decoder_pos_embed", "decoder_embed.weight")
    )  # tables equal to 1 ulp; dead layer zeroed


def test_official_copy_is_the_same_function_and_needs_square_images(tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    loss, pred, mask, latent = official_copy(model)(imgs, 0.75, noise)
    ours = model(imgs, noise=noise)
    assert torch.equal(ours.mask, mask)
    torch.testing.assert_close(ours.pred, pred, **TOL)
    with pytest.raises(ValueError, match="square images"):
        official_copy(crate_mae.create_model("crate_mae_tiny", **{**tiny_model_kwargs, "img_size": (32, 64)}))


def test_fixture_roundtrip_through_our_format(tmp_path):
    for name, kw in [
        ("crate_mae_micro", dict(num_heads=4)),
        ("paper_vit_mae_micro", dict(num_heads=4, decoder_num_heads=4, mask_tokens_in_encoder=True)),
    ]:
        path, io, meta = official_fixture(name)
        crate_mae.save_pretrained(crate_mae.load_checkpoint(path, **kw), tmp_path / name)
        model = crate_mae.from_pretrained(tmp_path / name)
        with torch.no_grad():
            out = model(io["imgs"], noise=io["noise"])
        assert torch.allclose(out.pred, io["pred"], **TOL)
