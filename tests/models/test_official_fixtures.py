"""Faithfulness: official state dicts reproduce every output the official code produced (fp32, rtol 1e-4, atol 1e-5)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import crate_mae

TOL = dict(rtol=1e-4, atol=1e-5)


def _fixture(shared_dir, name):
    fx = shared_dir / "fixtures"
    meta = json.loads((fx / f"{name}.json").read_text())
    return fx / f"{name}.official_state_dict.safetensors", load_file(str(fx / f"{name}.io.safetensors")), meta


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_crate_mae_micro_reproduces_official_outputs(shared_dir, impl):
    path, io, meta = _fixture(shared_dir, "crate_mae_micro")
    model = crate_mae.load_checkpoint(path, num_heads=meta["num_heads"]).set_impl(impl)
    assert model.num_params("official") == meta["n_parameters"]
    with torch.no_grad():
        out = model(io["imgs"], mask_ratio=meta["mask_ratio"], noise=io["noise"])
        assert torch.equal(out.mask, io["mask"])
        assert torch.allclose(out.latent, io["latent"], **TOL)
        assert torch.allclose(out.pred, io["pred"], **TOL)
        assert torch.allclose(out.loss.reshape(1), io["loss"], **TOL)
        assert torch.allclose(model.forward_features(io["imgs"]), io["features"], **TOL)
        assert torch.allclose(model.attention_maps(io["imgs"], layer=-1), io["attn_last"], **TOL)


def test_crate_mae_micro_train_mode_is_the_same_model(shared_dir):
    """No dropout anywhere: train mode computes the same function (what pretraining differentiates)."""
    path, io, meta = _fixture(shared_dir, "crate_mae_micro")
    model = crate_mae.load_checkpoint(path, num_heads=4).train()
    out = model(io["imgs"], noise=io["noise"])
    assert torch.allclose(out.pred, io["pred"], **TOL)
    out.loss.backward()


def test_vit_mae_micro_reproduces_official_outputs(shared_dir):
    path, io, meta = _fixture(shared_dir, "vit_mae_micro")
    model = crate_mae.load_checkpoint(path, num_heads=meta["num_heads"], decoder_num_heads=meta["decoder_num_heads"],
                                      norm_pix_loss=meta["norm_pix_loss"])
    assert model.num_params("official") == meta["n_parameters"]
    with torch.no_grad():
        out = model(io["imgs"], mask_ratio=meta["mask_ratio"], noise=io["noise"])
    assert torch.equal(out.mask, io["mask"])
    assert torch.allclose(out.latent, io["latent"], **TOL)
    assert torch.allclose(out.pred, io["pred"], **TOL)
    assert torch.allclose(out.loss.reshape(1), io["loss"], **TOL)


def test_fixture_roundtrip_through_our_format(shared_dir, tmp_path):
    path, io, meta = _fixture(shared_dir, "crate_mae_micro")
    crate_mae.save_pretrained(crate_mae.load_checkpoint(path, num_heads=4), tmp_path / "ours")
    model = crate_mae.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        out = model(io["imgs"], noise=io["noise"])
    assert torch.allclose(out.pred, io["pred"], **TOL)
